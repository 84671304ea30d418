"""``securefed privacy``: epsilon and noise calibration from the command line.

Mounted by the main command as ``app.add_typer(privacy_app, name="privacy")``.

Commands
--------
``epsilon --accountant NAME --noise-multiplier S --sample-rate Q --steps N --delta D [--json]``
    Epsilon spent by N Poisson-subsampled Gaussian steps. JSON keys: ``epsilon``,
    ``accountant``, ``delta``, ``noise_multiplier``, ``sample_rate``, ``steps``,
    ``upper_bound`` (``false`` for ``gdp``, a central-limit approximation that can
    underestimate epsilon; the text output then says "approximation").
``noise --accountant NAME --target-epsilon E --sample-rate Q --steps N --delta D [--json]``
    Smallest noise multiplier whose epsilon is at most E. JSON keys:
    ``noise_multiplier``, ``epsilon`` (achieved), ``target_epsilon``, ``accountant``,
    ``delta``, ``sample_rate``, ``steps``. Only upper-bound accountants (``rdp``,
    ``prv``, ``pld``) calibrate; ``gdp`` is refused.

Invalid arguments print ``error: ...`` on stderr and exit with code 2. The JSON keys
are stable: other tools parse them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from securefed.exceptions import SecurefedError
from securefed.report.console import fail

__all__ = ["privacy_app"]

privacy_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Privacy accounting: epsilon and noise calibration.")

AccountantOpt = Annotated[str, typer.Option(
    "--accountant", help="Accountant: rdp, prv, pld, or gdp (epsilon only; an "
    "approximation that can underestimate epsilon).")]
SampleRateOpt = Annotated[float, typer.Option(
    "--sample-rate", help="Poisson sampling rate q in (0, 1].")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Number of DP-SGD steps, >= 1.")]
DeltaOpt = Annotated[float, typer.Option("--delta", help="Target delta in (0, 1).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]



def _emit(payload: dict[str, Any], as_json: bool, human: str) -> None:
    typer.echo(json.dumps(payload) if as_json else human)


@privacy_app.command()
def epsilon(
    accountant: AccountantOpt,
    noise_multiplier: Annotated[float, typer.Option(
        "--noise-multiplier", help="Noise multiplier sigma > 0.")],
    sample_rate: SampleRateOpt,
    steps: StepsOpt,
    delta: DeltaOpt,
    as_json: JsonOpt = False,
) -> None:
    """Epsilon spent by STEPS Poisson-subsampled Gaussian steps."""
    from securefed.privacy.accountants import ACCOUNTANTS
    from securefed.privacy.calibration import epsilon_for

    try:
        eps = epsilon_for(accountant, noise_multiplier=noise_multiplier,
                          sample_rate=sample_rate, steps=steps, delta=delta)
        bound = ACCOUNTANTS.get(accountant).is_upper_bound
    except SecurefedError as exc:
        fail(exc)
    label = "" if bound else (" -- an APPROXIMATION (central-limit theorem) that can "
                              "underestimate epsilon; not valid for a budget")
    _emit({"epsilon": eps, "accountant": accountant, "delta": delta,
           "noise_multiplier": noise_multiplier, "sample_rate": sample_rate, "steps": steps,
           "upper_bound": bound},
          as_json,
          f"epsilon {'=' if bound else '~'} {eps:.6g} ({accountant}; delta={delta:g}, "
          f"noise_multiplier={noise_multiplier:g}, sample_rate={sample_rate:g}, "
          f"steps={steps}){label}")


@privacy_app.command()
def noise(
    accountant: AccountantOpt,
    target_epsilon: Annotated[float, typer.Option(
        "--target-epsilon", help="Target epsilon > 0.")],
    sample_rate: SampleRateOpt,
    steps: StepsOpt,
    delta: DeltaOpt,
    as_json: JsonOpt = False,
) -> None:
    """Smallest noise multiplier whose epsilon is at most TARGET_EPSILON."""
    from securefed.privacy.calibration import calibrate_noise

    try:
        res = calibrate_noise(accountant, target_epsilon=target_epsilon, delta=delta,
                              sample_rate=sample_rate, steps=steps)
    except SecurefedError as exc:
        fail(exc)
    _emit({"noise_multiplier": res.noise_multiplier, "epsilon": res.epsilon,
           "target_epsilon": target_epsilon, "accountant": accountant, "delta": delta,
           "sample_rate": sample_rate, "steps": steps},
          as_json,
          f"noise_multiplier = {res.noise_multiplier:.6g} (epsilon {res.epsilon:.6g} <= "
          f"{target_epsilon:g}; {accountant}; delta={delta:g}, sample_rate={sample_rate:g}, "
          f"steps={steps})")
