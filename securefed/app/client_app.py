"""The securefed ClientApp (Flower Message API).

``train``: load the global adapter payload, train locally, reply with the new payload
(only the method's trainable tensors, keyed by name) and metrics.
``evaluate``: load the global payload and report loss/accuracy on the client's local
validation split (federated evaluation).
``query.identify``: say which partition this node serves (:mod:`securefed.app.identify`),
so the server samples and reports by partition id, not by Flower's random node id.

The experiment config comes from ``context.run_config`` (see
:func:`securefed.app.settings.config_from_run_config`), the client's partition from
``context.node_config["partition-id"]``. Client-side privacy steps (masking, encryption,
and clipping inside them) are Flower mods around these handlers (:data:`MODS`); the
order is documented in ``docs/architecture.md``; what may leave, in
``docs/privacy.md``. Loading this module does not import
torch (the handlers import :mod:`securefed.app.local` on first use).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from securefed.app.ckks_mod import ckks_mod
from securefed.app.clipping_mod import clipping_mod
from securefed.app.egress_mod import egress_mod
from securefed.app.identify import handle_identify, register_identify
from securefed.app.secagg_mod import secagg_mod

__all__ = ["app", "handle_evaluate", "handle_identify", "handle_train"]

#: Privacy mods, outermost first. ``egress_mod`` is the single exit: every reply passes
#: it last, and only what the run's allow-list names leaves (securefed.app.egress).
#: ``secagg_mod`` and ``ckks_mod`` pass through every message that is not part of their
#: protocol; ``clipping_mod`` (user-level DP) runs inside them, so the update is
#: clipped before it is masked or encrypted.
MODS: list[Mod] = [egress_mod, secagg_mod, ckks_mod, clipping_mod]

app = register_identify(ClientApp(mods=MODS))  # query.identify, through MODS


def handle_train(msg: Message, context: Context) -> Message:
    """Train the global adapter on this client's partition and reply with it."""
    from securefed.app.local import handle_train as train_locally

    return train_locally(msg, context)


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global adapter on this client's local validation split."""
    from securefed.app.local import handle_evaluate as evaluate_locally

    return evaluate_locally(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower entry point for ``train`` messages."""
    return handle_train(msg, context)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Flower entry point for ``evaluate`` messages."""
    return handle_evaluate(msg, context)

