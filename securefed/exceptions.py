"""The securefed exception tree.

Every error securefed raises on purpose derives from :class:`SecurefedError`, so a
caller can catch the whole family at once. Errors that describe bad user input also
derive from :class:`ValueError` so that generic callers treat them as such.

::

    SecurefedError
    ├── ConfigError (ValueError)            a config value or combination cannot work
    │   └── UnknownNameError (KeyError)     a registry has no entry of that name
    ├── RegistryError                       duplicate registration, bad plug-in object
    ├── AssetError                          a packaged asset is missing or corrupt
    │   └── OfflineError                    a hub id was asked for while offline
    ├── PayloadError (ValueError)           a malformed adapter payload
    ├── AggregationError                    too few valid replies to aggregate a round
    ├── MethodError                         a tuning method cannot be applied here
    └── PrivacyError                        anything that would weaken privacy
        ├── PrivacyBudgetExhausted          a client's next round would exceed its budget
        └── SignatureError                  a signature is missing, forged, or not a
                                            roster member's

Whatever weakens privacy is an error, never a warning (see ``docs/threat-model.md``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AggregationError",
    "AssetError",
    "ConfigError",
    "MethodError",
    "OfflineError",
    "PayloadError",
    "PrivacyBudgetExhausted",
    "PrivacyError",
    "RegistryError",
    "SecurefedError",
    "SignatureError",
    "UnknownNameError",
]


class SecurefedError(Exception):
    """Root of every error securefed raises on purpose."""


class ConfigError(SecurefedError, ValueError):
    """A configuration value, or a combination of values, cannot work."""


class UnknownNameError(ConfigError, KeyError):
    """A registry was asked for a name it does not hold.

    Parameters
    ----------
    kind : str
        What the registry holds, e.g. ``"tuning method"``.
    name : str
        The name that was asked for.
    valid : Iterable[str]
        Every name the registry holds; listed in the message.
    """

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(
            f"unknown {kind} {name!r}; valid choices: {', '.join(self.valid) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class RegistryError(SecurefedError):
    """A plug-in could not be registered (duplicate name, wrong type)."""


class AssetError(SecurefedError):
    """A packaged asset (weights, dataset) is missing, unreadable or corrupt."""


class OfflineError(AssetError):
    """A hub model or dataset was requested while the hub cannot be reached."""


class PayloadError(SecurefedError, ValueError):
    """An adapter payload is malformed: keys, shapes, dtypes, non-finite values."""


class AggregationError(SecurefedError):
    """A round cannot be aggregated, e.g. too few valid replies remain."""


class MethodError(SecurefedError):
    """A tuning method cannot be applied to this backbone or configuration."""


class PrivacyError(SecurefedError):
    """An operation would weaken a privacy guarantee; it is refused."""


class PrivacyBudgetExhausted(PrivacyError):
    """Training one more round would take a client past its (epsilon, delta) budget.

    The client refuses before it trains; the server excludes it and records why.
    """


class SignatureError(PrivacyError):
    """A signed message failed verification, or its signer is not in the roster.

    Raised where a deviating server could otherwise substitute keys or messages
    (``docs/threat-model.md``); the message is refused and nothing secret is released.
    """
