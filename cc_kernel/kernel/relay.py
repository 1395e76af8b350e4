"""Kernel side: the relay that carries the monitor's own TLS connection to a data owner's broker.

``%cc_dataset`` makes the monitor ask for the key of a sealed dataset; the monitor cannot open network
connections from the enclave session itself, so it asks the kernel (``RelayOpen``) to connect to the broker
and to carry bytes both ways. Invariants:

* the kernel never terminates that TLS connection: it moves opaque bytes (``RelayData``) and learns nothing the
  broker sends the monitor (the data key is wrapped to a key only the attested enclave holds); neither end
  trusts it, and a change to a byte breaks the TLS connection;
* one relay per request id; connecting runs in its own task so the enclave reader never waits on the network;
* ``expect(req_id)`` is set when the monitor holds the dataset's key (``DatasetKeyed``), the relay ended or the
  request was answered: ``%cc_dataset`` sends the sealed body only then, so the enclave buffers nothing while
  it waits for the key;
* a relay lasts until either side ends it or the session ends: after the release it carries the owner's log;
* the address comes from the sealed file's header, which whoever made the file chose: the kernel connects only
  to a TCP ``HOST:PORT`` (never a Unix socket or vsock address on this machine) and, when the kernel is given
  a list of brokers (setting ``brokers``, ``CC_KERNEL_BROKERS``), only to one of them. Otherwise a file could
  make the kernel open a connection to any host and port it can reach (it would carry a TLS hello there, and
  the monitor would refuse whatever answered without the pinned broker key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from cc_kernel.channel.transport import Address, parse_address
from cc_kernel.errors import CCKernelError, ConfigError
from cc_kernel.protocol import messages as m

log = logging.getLogger("cc_kernel.kernel")

#: Seconds to connect to a broker.
CONNECT_TIMEOUT = 30.0
#: Bytes read from the broker per RelayData message.
RELAY_READ = 64 * 1024


@dataclass
class _Relay:
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    backlog: list[bytes] = field(default_factory=list)
    ended: bool = False


def broker_address(text: str) -> Address:
    """``text`` as the TCP address of a broker.

    Raises:
        ConfigError: not a ``HOST:PORT`` (or ``tcp://HOST:PORT``) with a port from 1 to 65535.
    """
    address = parse_address(text)
    named = text.strip().removeprefix("tcp://").rpartition(":")[0]  # parse_address reads "" as 127.0.0.1
    if address.kind != "tcp" or not named or address.port == 0:
        raise ConfigError(f"{text!r} is not a broker address: a broker is reached at HOST:PORT over TCP "
                          "(port 1 to 65535)")
    return address


class Relays:
    """The relays of one enclave session; ``send`` sends a message to the enclave; ``brokers``: the only
    addresses a relay may connect to (none given: any TCP ``HOST:PORT`` a sealed file names).

    Raises:
        ConfigError: an entry of ``brokers`` is not a broker address (named).
    """

    def __init__(self, send: Callable[[m.Message], Awaitable[None]], brokers: Iterable[str] = ()) -> None:
        self._send = send
        self._brokers = {_key(broker_address(text)): text for text in brokers}
        self._relays: dict[int, _Relay] = {}
        self._refusals: set[asyncio.Task[None]] = set()

    def expect(self, req_id: int) -> asyncio.Event:
        """The event set once request ``req_id``'s relay ended or it was answered (register before sending)."""
        return self._relays.setdefault(req_id, _Relay()).finished

    def answered(self, req_id: int) -> None:
        """The enclave answered request ``req_id``: the gate opens; a relay that was never opened is forgotten
        (an opened one lasts until either side ends it: it carries the owner's log while the dataset is open)."""
        relay = self._relays.get(req_id)
        if relay is None:
            return
        relay.finished.set()
        if relay.task is None:
            del self._relays[req_id]

    def handle(self, msg: m.RelayOpen | m.RelayData | m.RelayEnd | m.DatasetKeyed) -> None:
        """A relay message from the enclave (called by the link's reader; never waits)."""
        relay = self._relays.get(msg.req_id)
        if isinstance(msg, m.DatasetKeyed):
            if relay is not None:
                relay.finished.set()
            return
        if isinstance(msg, m.RelayOpen):
            if relay is None or relay.task is not None:
                log.warning("the enclave asked for a relay for request %s, which expects none", msg.req_id)
                task = asyncio.ensure_future(self._refuse(msg.req_id, "no relay is expected for this request"))
                self._refusals.add(task)
                task.add_done_callback(self._refusals.discard)
                return
            relay.task = asyncio.ensure_future(self._run(msg.req_id, relay, msg.address))
        elif relay is None:
            return
        elif isinstance(msg, m.RelayData):
            if relay.writer is None:
                relay.backlog.append(msg.data)
            else:
                relay.writer.write(msg.data)
        else:
            relay.ended = True
            self._end(relay)
            del self._relays[msg.req_id]

    async def _refuse(self, req_id: int, reason: str) -> None:
        with contextlib.suppress(CCKernelError):
            await self._send(m.RelayEnd(req_id=req_id, reason=reason))

    @staticmethod
    def _end(relay: _Relay) -> None:
        relay.finished.set()
        if relay.writer is not None:
            relay.writer.close()
        if relay.task is not None and relay.task is not asyncio.current_task():
            relay.task.cancel()

    def _destination(self, address: str) -> Address:
        """Where the relay for a sealed file naming ``address`` may connect; raises ConfigError if nowhere."""
        try:
            addr = broker_address(address)
        except ConfigError as exc:
            raise ConfigError(f"the sealed file names {address!r} as its broker; {exc}") from None
        if self._brokers and _key(addr) not in self._brokers:
            raise ConfigError(
                f"the sealed file names the broker at {address!r}, which is not one of the brokers this kernel "
                f"may reach ({', '.join(sorted(self._brokers.values()))}: setting brokers, CC_KERNEL_BROKERS)")
        return addr

    async def _run(self, req_id: int, relay: _Relay, address: str) -> None:
        reason = ""
        try:
            addr = self._destination(address)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port),
                                                    CONNECT_TIMEOUT)
            relay.writer = writer
            for data in relay.backlog:
                writer.write(data)
            relay.backlog.clear()
            if relay.ended:
                return
            while data := await reader.read(RELAY_READ):
                await self._send(m.RelayData(req_id=req_id, data=data))
            reason = "the broker closed the connection"
        except ConfigError as exc:
            reason = f"the kernel does not relay there: {exc}"
            log.warning("%s", reason)
        except (OSError, TimeoutError, ValueError, CCKernelError) as exc:
            reason = f"the kernel cannot relay to the broker at {address}: {exc}"
            log.warning("%s", reason)
        finally:
            if not relay.ended:
                with contextlib.suppress(CCKernelError):
                    await self._send(m.RelayEnd(req_id=req_id, reason=reason))
            if relay.writer is not None:
                relay.writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(relay.writer.wait_closed(), 2.0)

    def close(self) -> None:
        """End every relay (the session is over)."""
        for relay in self._relays.values():
            self._end(relay)
        self._relays.clear()


def _key(address: Address) -> tuple[str, int]:
    return address.host.lower().strip("[]"), address.port


__all__ = ["Relays", "broker_address"]
