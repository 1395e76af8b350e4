"""Package: Confidential Python, a Jupyter kernel whose cells run inside an attested Trusted Execution Environment."""

__version__ = "0.1.0"
