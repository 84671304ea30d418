"""Errors of the secure-aggregation (SecAgg+) package.

They hang below :class:`securefed.exceptions.SecurefedError`, so a caller that catches
the whole securefed family also catches these::

    SecurefedError
    └── SecAggError                          anything the SecAgg+ code refuses
        ├── ProtocolError                    a malformed, unexpected or forged message
        │   ├── DecryptionError              an authenticated ciphertext failed to verify
        │   └── FloorError (PrivacyError)    a server's message would take the client
        │                                    below a floor (t neighbours, t survivors,
        │                                    consistency signatures, node-config floors)
        ├── DropoutError (AggregationError)  too few clients or shares remain to finish
        └── SumRangeError (AggregationError) the unmasked sum is one no honest clients make

Configuration mistakes (a threshold that is too small, a modulus that would overflow)
raise :class:`securefed.exceptions.ConfigError`; values that would weaken privacy, such
as an input beyond the declared clipping range, raise
:class:`securefed.exceptions.PrivacyError`. Both are shared with the rest of securefed.

References
----------
Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", ACM CCS 2017. Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", ACM CCS 2020, arXiv:2009.05807.
"""

from __future__ import annotations

from securefed.exceptions import AggregationError, PrivacyError, SecurefedError

__all__ = ["DecryptionError", "DropoutError", "FloorError", "ProtocolError", "SecAggError",
           "SumRangeError"]


class SecAggError(SecurefedError):
    """Root of every error the secure-aggregation code raises on purpose."""


class ProtocolError(SecAggError):
    """A protocol message is malformed, unexpected at this stage, or inconsistent."""


class DecryptionError(ProtocolError):
    """An AES-GCM ciphertext or its associated data failed authentication."""


class DropoutError(SecAggError, AggregationError):
    """Too many clients dropped out (or too few shares remain) to finish the round.

    Raised instead of ever returning a wrong aggregate.
    """


class FloorError(ProtocolError, PrivacyError):
    """A server's message would take this client below a privacy floor; refused.

    Raised before anything secret is released: fewer than ``t`` share bundles before
    masking, fewer than ``t`` survivors before unmasking, too few consistency
    signatures, or a setup config below the node's own floors (``n``, ``k``, ``t``,
    ``bits``, clipping range). The message names the floor (see
    ``docs/threat-model.md``).
    """


class SumRangeError(SecAggError, AggregationError):
    """The unmasked sum lies outside ``[0, n * q_max]``: no honest clients produce it.

    A client that masked an out-of-range vector (or a wrong unmasking) shows up here;
    the round ends with this typed error rather than a wrong aggregate.
    """
