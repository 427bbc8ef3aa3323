"""The operations, as calls into the batching engine. Routes call these and nothing else.

Nothing here knows a family: each operation reads the model's declaration (``lm.model.
operations``: API operation -> ``Op``, models/operations.py), calls the declared method through
the engine, and wraps the result in the operation's typed output.

Everything random (the draws of generate, corruption for denoise) happens here, on the request
path and per request, from the request's own seed: batching never changes which images a seed
gives.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import secrets
import weakref
from collections.abc import Iterable, Iterator
from functools import partial
from typing import cast

import torch

from models import EncodeOutput, Op, SearchBudget, corrupt
from models.imaging import to_pixels
from models.operations import INPUTS, Objective, wrap_output

from .batching import (
    BatchEngine,
    BatchFn,
    DeadlineExceeded,
    Output,
    lower_priority,
    should_stop,
)
from .config import Settings
from .context import CURRENT, RequestContext
from .engines import EngineCall
from .gif_worker import GifProcess
from .problems import InvalidInput, NotSupported, TimedOut, TooManyRequests
from .registry import LoadedModel

log = logging.getLogger("latentserve.inference")
# operation, method, pixels, options
CallKey = tuple[str, str, bool, tuple[tuple[str, int | str], ...]]


def new_seed() -> int:
    return secrets.randbits(63)


def parse_latents(lm: LoadedModel, rows: list[list[float]], field: str) -> torch.Tensor:
    """List of latent vectors -> tensor [B, latent_dim]; the length and finiteness are checked."""
    k = lm.model.latent_dim
    for i, row in enumerate(rows):
        if len(row) != k:
            where = field if len(rows) == 1 else f"{field}[{i}]"
            raise InvalidInput(f"{where}: {lm.name} takes latents of length {k}, got {len(row)}")
    return check_latent_values(torch.tensor(rows, dtype=torch.float32), field)


def check_latent_values(z: torch.Tensor, field: str) -> torch.Tensor:
    """``z`` if its values are finite and of magnitude at most 10000; else a 422 naming ``field``."""
    if not torch.isfinite(z).all() or z.abs().max() > 1e4:
        raise InvalidInput(f"{field}: values must be finite numbers of magnitude at most 10000")
    return z


def class_index(lm: LoadedModel, value: int | str | None, field: str) -> int | None:
    """A class given by name or index -> its index; None stays None (a random class)."""
    if value is None:
        return None
    if not lm.model.conditional:
        raise NotSupported(
            f"{field}: model {lm.name!r} is not class-conditional; leave {field} out"
        )
    names = lm.class_names
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value < len(names):
            raise InvalidInput(
                f"{field}: index {value} is out of range; {lm.name} has classes 0..{len(names) - 1}"
            )
        return value
    if value not in names:
        raise InvalidInput(
            f"{field}: {value!r} is not a class of {lm.name}; choose one of: {', '.join(names)}"
        )
    return names.index(value)


def interpolation_path(za: torch.Tensor, zb: torch.Tensor, steps: int, method: str) -> torch.Tensor:
    """[K], [K] -> [steps, K]. slerp follows the great circle (Shoemake 1985; White 2016,
    "Sampling Generative Networks"), which keeps Gaussian latents at a typical norm."""
    t = torch.linspace(0, 1, steps).unsqueeze(1)  # [steps, 1]
    if method == "slerp":
        a, b = za / za.norm().clamp_min(1e-8), zb / zb.norm().clamp_min(1e-8)
        omega = torch.arccos((a * b).sum().clamp(-1 + 1e-7, 1 - 1e-7))
        if float(omega) > 1e-4:
            so = torch.sin(omega)
            return (torch.sin((1 - t) * omega) / so) * za + (torch.sin(t * omega) / so) * zb
    return (1 - t) * za + t * zb


@dataclasses.dataclass(frozen=True, eq=False)
class ModelCall:
    """One batched call of a served model: the batching engine's unit of work and its own
    batching key. Requests are batch-mates exactly when their calls are equal (same model
    version, method and output form: decode and generate share a batch), so no two call
    sites can share a key while running different functions: the function is derived from
    the key's fields."""

    lm: LoadedModel  # compared by identity: a reload makes a new one
    operation: str = dataclasses.field(compare=False)  # for the metrics only
    method: str
    pixels: bool = False
    fn: BatchFn = dataclasses.field(compare=False, repr=False, default=lambda x: x)
    search: bool = False  # an iterative search: always the expensive lane
    #: keyword arguments of the method (likelihood's samples), sorted: part of the key
    options: tuple[tuple[str, int | str], ...] = ()

    def __call__(self, x: torch.Tensor) -> Output:
        return self.fn(x)

    # the key: compared for every queued request while a batch forms, and calls are cached,
    # so the same object is the common case
    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ModelCall):
            return NotImplemented
        return (
            self.lm is other.lm
            and self.method == other.method
            and self.pixels == other.pixels
            and self.options == other.options
        )

    def __hash__(self) -> int:
        return hash((id(self.lm), self.method, self.pixels, self.options))

    @property
    def cost(self) -> int:
        """Model passes per row: the importance samples of a likelihood bound, else 1."""
        return max((int(v) for key, v in self.options if key == "samples"), default=1)

    @property
    def label(self) -> tuple[str, str]:
        """(model, operation) for the batch metrics."""
        return self.lm.name, self.operation


class Operations:
    """Two lanes, each an engine with its own inference thread: cheap calls in ``engine``;
    expensive ones (searches, and requests of more than ``expensive_rows`` rows) in
    ``expensive``, whose thread runs at a lower priority and which each client may use for at
    most ``max_expensive_per_client`` requests at a time (429 beyond). A three-second GAN
    inversion then no longer stands in the queue in front of a millisecond reconstruct."""

    def __init__(
        self, engine: BatchEngine, settings: Settings, expensive: BatchEngine | None = None,
        compiled: dict[LoadedModel, dict[str, EngineCall]] | None = None,
    ) -> None:  # fmt: skip
        """``compiled``: calls compiled already, by model and method (preloading.py)."""
        self.engine = engine
        self.expensive = expensive or engine
        self.settings = settings
        # a search stops between its steps once nobody waits for it (batching.should_stop)
        self.budget = SearchBudget(settings.inversion_steps, settings.inversion_restarts,
                                   settings.inversion_time_budget_s, stop=should_stop,
                                   refine_steps=settings.inversion_refine_steps)  # fmt: skip
        self._expensive_running: collections.Counter[str] = collections.Counter()  # by client
        # large replies (GIFs, big grids) are encoded here: off the event loop, at the
        # expensive lane's priority (an 80 ms GIF at normal priority took the cheap lane's CPU)
        self.encoder = concurrent.futures.ThreadPoolExecutor(
            1, "expensive-replies", initializer=lower_priority,
            initargs=(settings.expensive_lane_nice, "the reply encoder"),
        )  # fmt: skip
        # GIFs are encoded in a child process: Pillow's GIF writer holds the interpreter
        # lock throughout (gif_worker.py); started on the first GIF, or by warm_up
        self.gifs = GifProcess(nice=settings.expensive_lane_nice)
        # each served model's calls and compiled methods (engines.py), made on first use; a
        # reload makes a new LoadedModel, and the old one's go with it
        self._calls: weakref.WeakKeyDictionary[LoadedModel, dict[CallKey, ModelCall]] = (
            weakref.WeakKeyDictionary()
        )  # fmt: skip
        self._traces: weakref.WeakKeyDictionary[LoadedModel, dict[str, EngineCall]] = (
            weakref.WeakKeyDictionary({lm: dict(calls) for lm, calls in (compiled or {}).items()})
        )

    def compiled(self, lm: LoadedModel, method: str) -> EngineCall:
        """``lm.model.<method>`` for the inference thread: compiled by the setting's engine
        once it has been checked (engines.py). One per method, whichever operations and
        output forms use it."""
        traces = self._traces.get(lm)
        if traces is None:
            traces = self._traces[lm] = {}
        if method not in traces:
            s = self.settings
            traces[method] = EngineCall(
                lm.model, method, f"{lm.name}.{method}", s.engine, s.torch_threads, s.device
            )
        return traces[method]

    def call(
        self, lm: LoadedModel, operation: str, pixels: bool = False, op: Op | None = None,
        **options: int | str,
    ) -> ModelCall:  # fmt: skip
        """The batched call for a declared operation (``generate`` runs its ``method``), or
        for ``op`` where the request chose one (a sampler); with ``pixels``, images come back
        as uint8 [n, H, W, C], converted once per batch on the inference thread (per request
        on the event loop it was ~5% of the loop's time). ``options`` are keyword arguments
        of the method (``samples``), or of a search's budget (``method``, ``steps``): calls
        with different options never share a batch."""
        op = op or self._declared(lm, operation)
        key = (operation, op.method, pixels, tuple(sorted(options.items())))
        calls = self._calls.get(lm)  # get, not setdefault: that makes a weakref per call
        if calls is not None:
            found = calls.get(key)
            if found is not None:
                return found
        else:
            calls = self._calls[lm] = {}
        fn: BatchFn
        if op.search:  # iterative: never traced, run with the settings' budget
            budget = dataclasses.replace(self.budget, **options)  # type: ignore[arg-type]
            if op.objective:  # what it evaluates at every step, compiled as any call is
                objective = cast(Objective, self.compiled(lm, op.objective))  # (error, grad)
                budget = dataclasses.replace(budget, objective=objective)
            fn = partial(getattr(lm.model, op.method), budget=budget)
        elif options or not op.traceable:  # with arguments: as it is (a trace has none)
            fn = partial(getattr(lm.model, op.method), **options)
        else:
            fn = self.compiled(lm, op.method)
        if pixels:
            fn = partial(_as_pixels, fn)
        calls[key] = ModelCall(lm, operation, op.method, pixels, fn, op.search, key[3])
        return calls[key]

    @staticmethod
    def _declared(lm: LoadedModel, operation: str) -> Op:
        op = lm.model.operations.get(operation)
        if op is None:
            raise NotSupported(
                f"model {lm.name!r} ({lm.model.family}) does not support {operation}; "
                f"it supports: {', '.join(lm.operations)}"
            )
        return op

    async def run(
        self, lm: LoadedModel, operation: str, x: torch.Tensor, pixels: bool = False,
        op: Op | None = None, **options: int | str,
    ) -> Output:  # fmt: skip
        """The declared call (or ``op``) on ``x``, in its lane, by the request's deadline
        (context.py)."""
        call = self.call(lm, operation, pixels, op, **options)
        s = self.settings
        expensive = call.search or len(x) * call.cost > s.expensive_rows
        engine = self.expensive if expensive else self.engine
        ctx = CURRENT.get()
        if ctx is None:  # not from a request (warm-up, tests): no deadline, no client
            return await engine.run(call, x)
        default_s = s.expensive_timeout_s if expensive else s.request_timeout_s
        with self._expensive_slot(ctx.client) if expensive else contextlib.nullcontext():
            try:
                return await engine.run(call, x, ctx.deadline(default_s), ctx.when_gone)
            except DeadlineExceeded:
                raise self._timed_out(ctx, default_s) from None

    @contextlib.contextmanager
    def _expensive_slot(self, client: str) -> Iterator[None]:
        """One of the client's ``max_expensive_per_client`` places in the expensive lane."""
        s = self.settings
        if self._expensive_running[client] >= s.max_expensive_per_client:
            raise TooManyRequests(
                f"this client already has {s.max_expensive_per_client} expensive requests "
                f"running (searches, or more than {s.expensive_rows} rows); retry when one has finished"
            )
        self._expensive_running[client] += 1
        try:
            yield
        finally:
            self._expensive_running[client] -= 1
            if not self._expensive_running[client]:
                del self._expensive_running[client]

    @staticmethod
    def _timed_out(ctx: RequestContext, default_s: float) -> TimedOut:
        given = f"its {ctx.timeout_from}" if ctx.timeout_s is not None else "the server's default"
        return TimedOut(
            f"the request's deadline of {ctx.budget_s(default_s):g} s ({given}) passed before "
            f"it finished, so its work was stopped; send a longer {ctx.timeout_from} or less work"
        )

    async def warm_up(self, models: Iterable[LoadedModel]) -> int:
        """Run one small batch of each model's traceable calls, so that their traces exist
        before the first requests need them (tracing takes ~0.1-0.5 s per call, and ~5-10
        MB each: LATENTSERVE_TRACE_AT_START), and one search of each search that declares an
        objective (a GAN's inversion), in the expensive lane where searches run, which
        compiles the objective. The calls are exactly those requests make (``call``), read
        from the declaration, and the anomaly score's features call where the model serves
        one. Returns how many calls are now compiled. The batches queue like requests:
        traffic that arrives meanwhile waits behind at most one of them. The GIF encoder's
        process starts here too."""
        await asyncio.to_thread(self.gifs.start)
        if self.settings.engine == "torch":
            return 0
        compiled: set[tuple[str, str]] = set()
        g = torch.Generator().manual_seed(0)
        for lm in models:
            for call, x, method in self._warm_up_calls(lm, g):
                try:
                    await (self.expensive if call.search else self.engine).run(call, x)
                except Exception as exc:  # the model's requests will say it; keep warming
                    log.warning("warming up %s.%s failed: %s", lm.name, method, exc)
                if self.compiled(lm, method).state not in ("pending", "eager"):
                    compiled.add((lm.name, method))
        return len(compiled)

    def compile_here(self, models: Iterable[LoadedModel]) -> None:
        """What ``warm_up`` compiles, compiled on this thread, without the lanes (which need
        not have started): the supervisor's preloading (preloading.py)."""
        g = torch.Generator().manual_seed(0)
        for lm in models:
            for call, x, method in self._warm_up_calls(lm, g):
                try:
                    with torch.inference_mode():
                        call(x)
                except Exception as exc:  # as in warm_up: the model's requests will say it
                    log.warning("compiling %s.%s failed: %s", lm.name, method, exc)

    def engine_states(self) -> list[tuple[str, str, str, dict[str, float]]]:
        """(model, method, engine, timings) of every call compiled so far (not pending)."""
        return [
            (lm.name, method, call.state, dict(call.timings))
            for lm, calls in self.compiled_calls().items()
            for method, call in calls.items()
            if call.state != "pending"
        ]

    def compiled_calls(self) -> dict[LoadedModel, dict[str, EngineCall]]:
        """Every model's compiled calls so far, by method (for ``compiled=``)."""
        return {lm: dict(calls) for lm, calls in self._traces.items()}

    def _warm_up_calls(
        self, lm: LoadedModel, g: torch.Generator
    ) -> list[tuple[ModelCall, torch.Tensor, str]]:
        """What warm_up runs for one model, with the method that it compiles: each traceable
        declared operation's call and each search with an objective, on one row of what it
        takes, and the anomaly score's features call where the model has one."""
        model, calls = lm.model, []
        for operation, op in model.operations.items():
            method = op.objective if op.search else op.method if op.traceable else None
            if method is None:
                continue
            if op.prepare is not None:
                x = getattr(model, op.prepare)(1, g, 1.0, None)
            elif INPUTS.get(operation) == "latents":
                x = torch.randn(1, model.latent_dim, generator=g)
            else:
                x = torch.rand(1, *model.image_shape, generator=g)
            calls.append((self.call(lm, operation), x, method))
        features = model.density.features if model.density and lm.features else None
        if features:  # the feature distance runs it as density.py does
            x = torch.rand(1, *model.image_shape, generator=g)
            calls.append((self.call(lm, "likelihood", op=Op(features)), x, features))
        return calls

    async def encode(
        self, lm: LoadedModel, x: torch.Tensor, inversion: str | None = None
    ) -> EncodeOutput:
        """x [B, C, H, W] -> the typed output: latent, and mean/log_var/reconstruction_error
        where the family declares them. ``inversion``: the method of a search (``None``: the
        model's default; see ``inversion_method``)."""
        method = inversion_method(lm, inversion)
        options = {} if method is None else {"method": method}
        out = wrap_output(
            "encode",
            self._declared(lm, "encode"),
            await self.run(lm, "encode", x, False, None, **options),
        )
        assert isinstance(out, EncodeOutput)
        return out

    async def decode(self, lm: LoadedModel, z: torch.Tensor, pixels: bool = False) -> torch.Tensor:
        """Images float [n, C, H, W] in [0, 1], or with ``pixels`` uint8 [n, H, W, C]."""
        return _tensor(await self.run(lm, "decode", z, pixels))

    async def reconstruct(
        self, lm: LoadedModel, x: torch.Tensor, pixels: bool = False, inversion: str | None = None
    ) -> torch.Tensor:
        """Like ``decode``. A model that declares no reconstruct but encodes and decodes (a GAN,
        by search, in the ``inversion`` method) reconstructs through its code."""
        if "reconstruct" not in lm.model.operations:
            code = (await self.encode(lm, x, inversion)).latent
            return await self.decode(lm, code, pixels)
        inversion_method(lm, inversion)  # refuses a method for a model that does not search
        return _tensor(await self.run(lm, "reconstruct", x, pixels))

    async def log_likelihood(
        self, lm: LoadedModel, x: torch.Tensor, samples: int | None = None
    ) -> torch.Tensor:
        """x [B, C, H, W] -> log p(x) in nats [B], or the bound or estimate the model's
        ``density`` names; ``samples`` (families whose density takes them) sets K."""
        options = {} if samples is None else {"samples": samples}
        return _tensor(await self.run(lm, "likelihood", x, False, None, **options))

    async def classify(self, lm: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> class probabilities [B, classes]."""
        return _tensor(await self.run(lm, "classify", x))

    def corrupt(self, x: torch.Tensor, kind: str, level: float, seed: int) -> torch.Tensor:
        return corrupt(x, kind, level, torch.Generator().manual_seed(seed))

    def prior_latents(
        self, lm: LoadedModel, n: int, seed: int, temperature: float, label: int | None = None
    ) -> torch.Tensor:
        """Codes from the model's prior, seeded: what ``generate`` decodes [n, latent_dim]."""
        labels = None if label is None else torch.full((n,), label, dtype=torch.long)
        return lm.model.sample_latent(n, torch.Generator().manual_seed(seed), temperature, labels)

    async def generate(
        self,
        lm: LoadedModel,
        n: int,
        seed: int,
        temperature: float,
        label: int | None = None,
        pixels: bool = False,
        sampler: str | None = None,
        steps: int | None = None,
        frames: bool = False,
    ) -> torch.Tensor:
        """n images through the model's own sampling: its ``prepare`` draws this request's
        randomness from its seed, its ``method`` runs batched with other requests.
        ``sampler`` picks one of the model's ways (None: its default), ``steps`` a chain's
        length (None: LATENTSERVE_CHAIN_STEPS); with ``frames`` a chain's states instead,
        [n, F, C, H, W]. InvalidInput when the model has no such sampler, or ``steps`` or
        ``frames`` mean nothing to it."""
        op = self.sampler(lm, sampler, steps, frames)
        assert op.prepare is not None  # checked when the family registered
        labels = None if label is None else torch.full((n,), label, dtype=torch.long)
        g = torch.Generator().manual_seed(seed)
        drawn = getattr(lm.model, op.prepare)(n, g, temperature, labels)
        options = {"steps": steps or self.settings.chain_steps} if op.takes_steps else {}
        return _tensor(await self.run(lm, "generate", drawn, pixels, op, **options))

    def sampler(
        self, lm: LoadedModel, name: str | None, steps: int | None = None, frames: bool = False
    ) -> Op:
        """The declaration a generate request runs (frames: the chain's frames method)."""
        self._declared(lm, "generate")
        try:
            op = lm.model.sampler(name)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        which = f"sampler {name!r}" if name else "its default sampler"
        if steps is not None and not op.takes_steps:
            raise InvalidInput(
                f"steps: model {lm.name!r} generates by {which}, which is not a chain; "
                "leave steps out (chains: " + (", ".join(self.chains(lm)) or "none") + ")"
            )
        if steps is not None and steps > self.settings.max_chain_steps:
            raise InvalidInput(
                f"steps: at most {self.settings.max_chain_steps} (LATENTSERVE_MAX_CHAIN_STEPS), "
                f"got {steps}"
            )
        if frames:
            if op.frames is None:
                raise InvalidInput(
                    f"format=gif: model {lm.name!r} generates by {which}, which has no frames "
                    "to animate; a chain sampler has (" + (", ".join(self.chains(lm)) or
                    "this model has none") + "), or ask for png or json"
                )  # fmt: skip
            op = dataclasses.replace(op, method=op.frames)
        return op

    @staticmethod
    def chains(lm: LoadedModel) -> list[str]:
        """The model's samplers that run a chain (take ``steps``, animate as a GIF)."""
        return list(lm.model.chain_sampler_names)

    async def interpolate(
        self, lm: LoadedModel, za: torch.Tensor, zb: torch.Tensor, steps: int, method: str
    ) -> torch.Tensor:
        path = interpolation_path(za, zb, steps, method)
        if not torch.isfinite(path).all() or not math.isfinite(float(path.abs().max())):
            raise InvalidInput("the interpolation path is not finite")
        return await self.decode(lm, path)


def inversion_method(lm: LoadedModel, inversion: str | None) -> str | None:
    """The search method an encode of ``lm`` runs: ``inversion`` if the model has it, its
    default when None; None for a model whose encode is not a search. InvalidInput names
    what the model has instead."""
    methods = lm.model.inversion_methods
    if inversion is None:
        return methods[0] if methods else None
    if not methods:
        raise InvalidInput(
            f"inversion: model {lm.name!r} ({lm.model.family}) encodes without a search; "
            "leave inversion out"
        )
    if inversion not in methods:
        extra = (
            "; an amortised inversion needs an inverter: "
            f"python -m training fit-inverter --model weights/{lm.name}"
            if inversion == "amortised" else ""
        )  # fmt: skip
        raise InvalidInput(
            f"inversion: model {lm.name!r} has no {inversion!r} inversion (it has: "
            f"{', '.join(methods)}){extra}"
        )
    return inversion


def _tensor(out: Output) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"expected one tensor, got {type(out).__name__}")
    return out


def _as_pixels(call: BatchFn, x: torch.Tensor) -> Output:
    return to_pixels(_tensor(call(x)))
