"""One quantizer run on a layer set only (`QuantSettings.layers`, grammar in qsens.quantizers.layer_sets), for any
method: the method is called with `skip` extended by every selectable Linear outside the set, and its result is
checked against the set."""

from __future__ import annotations

import re
from types import ModuleType

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layer_sets import members
from qsens.quantizers.layers import quantizable_linears


def restricted(settings: QuantSettings, names: list[str]) -> tuple[QuantSettings, list[str]]:
    """The settings a method runs with to quantize only `settings.layers` (whole-model settings unchanged), and
    the module names it must quantize. `names`: the model's Linear names selectable under `settings.skip`."""
    if settings.layers is None:
        return settings, names
    chosen = members(settings.layers, names)
    if not chosen:
        raise ValueError(f"layer set {settings.layers!r} selects no Linear module of this model; selectable: {names}")
    outside = tuple(_escaped(n) for n in names if n not in set(chosen))
    return settings.model_copy(update={"layers": None, "skip": settings.skip + outside}), chosen


def quantize_selected(module: ModuleType, ctx: QuantContext, settings: QuantSettings) -> QuantResult:
    """`module.quantize` on the layer set of `settings` only; raises if the method touched other layers."""
    names = [n for n, _ in quantizable_linears(ctx.fp_model, settings.skip)]
    run_settings, chosen = restricted(settings, names)
    result = module.quantize(ctx, run_settings)
    if settings.layers is not None and sorted(result.layers_quantized) != sorted(chosen):
        raise ValueError(f"{settings.method} quantized {sorted(result.layers_quantized)[:5]} but layer set "
                         f"{settings.layers!r} is {sorted(chosen)[:5]}: this method does not honour `skip`")
    result.details = {**result.details, "layer_set": settings.layers}
    return result


def _escaped(name: str) -> str:
    """An fnmatch pattern that matches exactly `name`."""
    return re.sub(r"([*?\[])", r"[\1]", name)
