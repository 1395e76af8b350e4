"""channel.transport.parse_address: TCP ports are ASCII digits in 0..65535, and numbers too long for ``int``
are refused as ConfigError too. The vsock forms and their errors are in tests/test_vsock.py."""

from __future__ import annotations

import pytest

from cc_kernel.channel.transport import Address, parse_address
from cc_kernel.errors import ConfigError

TCP_FORM = "use unix:/path/to.sock or tcp://HOST:PORT"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("tcp://example.org:1", "example.org", 1),
        ("tcp://example.org:65535", "example.org", 65535),
        ("127.0.0.1:0", "127.0.0.1", 0),  # --listen 127.0.0.1:0: the system picks a free port
        ("tcp://[::1]:7800", "::1", 7800),
        (":7800", "127.0.0.1", 7800),
        ("tcp://h:007800", "h", 7800),
        ("tcp://h:" + "0" * 5000 + "80", "h", 80),  # leading zeros do not count towards int's digit limit
    ],
)
def test_tcp_addresses_parse(text: str, host: str, port: int) -> None:
    address = parse_address(text)
    assert address == Address("tcp", host=host, port=port)
    assert parse_address(str(address)) == address


@pytest.mark.parametrize(
    ("text", "port_text"),
    [
        ("tcp://h:\uff17\uff18\uff10\uff10", "\uff17\uff18\uff10\uff10"),  # fullwidth 7800: int() would accept it
        ("h:\u0667\u0668\u0660\u0660", "\u0667\u0668\u0660\u0660"),  # Arabic-Indic 7800: int() would accept it
        ("tcp://h:\u00b2", "\u00b2"),  # a digit to str.isdigit(), a ValueError from int()
        ("tcp://h:8\u2080", "8\u2080"),  # subscript zero: the same
        ("tcp://h:65536", "65536"),
        ("tcp://h:99999999999999999999", "99999999999999999999"),
        ("tcp://h:-1", "-1"),
        ("tcp://h:+80", "+80"),
        ("tcp://h:8_0", "8_0"),
        ("tcp://h:0x50", "0x50"),
        ("tcp://h:http", "http"),
    ],
)
def test_bad_tcp_ports_are_config_errors_that_name_the_port(text: str, port_text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text)
    assert str(info.value) == f"TCP port {port_text!r} in {text!r} is not a number from 0 to 65535: {TCP_FORM}"


def test_a_tcp_port_too_long_for_int_is_a_config_error() -> None:
    text = "tcp://h:" + "1" * 5000  # int() raises ValueError beyond 4300 digits
    with pytest.raises(ConfigError) as info:
        parse_address(text)
    assert str(info.value).startswith("TCP port '1111")
    assert str(info.value).endswith(f"is not a number from 0 to 65535: {TCP_FORM}")


@pytest.mark.parametrize("text", ["nowhere", "tcp://h:", "tcp://h", ""])
def test_tcp_addresses_without_a_port_show_the_form(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text)
    assert str(info.value) == f"cannot parse address {text!r}: {TCP_FORM}"


@pytest.mark.parametrize(
    ("text", "what"),
    [("vsock://" + "1" * 5000 + ":5005", "vsock CID '1111"), ("vsock://16:" + "1" * 5000, "vsock port '1111")],
)
def test_vsock_numbers_too_long_for_int_are_config_errors(text: str, what: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text)
    assert str(info.value).startswith(what)
    assert "is not a number from 0 to 429496729" in str(info.value)
