"""Gradient-inversion evaluation against adapter updates (planned; see the tracker).

This package will hold threat-model cases (what an honest-but-curious server observes
under each defence), an attack registry with ``reconstruct(observation, *, rng)``,
and reconstruction metrics. It is the one place besides the client where torch may be
imported. The federated core already provides what it will build on: the exact
payload a client sends (``securefed.methods.TuningMethod.payload`` and the packed
wire format in ``strategies.records``), and ``[capture]`` in the experiment config,
which saves one chosen client's reply in a chosen round exactly as the server received
it, together with the global payload it was sent (``RoundObserver.on_reply``).
"""
