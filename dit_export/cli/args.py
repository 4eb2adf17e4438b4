"""The argument groups every command shares: each adds its flags once and parses them into one object.

`ModelArgs` → `ModelSpec` (which DiT, weights, VAE, size, classes, flavor), `RequestArgs` →
`SampleRequest`, `BackendArgs` → one canonical backend word, `EnginesArgs` → one export/engines
folder. A flag is declared here once, with one default; commands pick the groups they need
(the shape of polygraphy's `tools/args`: `ModelArgs.add_to(parser)` then `ModelArgs.parse(args)`).

Nothing here imports torch, onnx or a backend: `--help` works on a runtime-only install.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from dit_export.backends import BACKENDS, aliases_of, canonical_backend
from dit_export.errors import UserError
from dit_export.fileio import write_json
from dit_export.models.spec import ModelSpec
from dit_export.sampling import samplers
from dit_export.sampling.request import DEFAULT_CACHE_ORDER, NOISE_KINDS, SampleRequest

OFFICIAL_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)  # the official sample.py grid
PRECISIONS = ("fp16", "fp32", "int8", "fp8")  # export.precision.PRECISIONS (int8/fp8: issue 22)
DEFAULT_PRECISION = "fp16"  # mixed fp16 with fp32 islands: what every command builds by default


class Parser(argparse.ArgumentParser):
    """argparse with the project's error shape: one line on stderr, exit 2 (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------ value types


def count(text: str) -> int:
    """An integer flag value; `1e9` is read as 1000000000 so that the range check can name its limit."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def non_negative(text: str) -> int:
    value = count(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def positive(text: str) -> int:
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return value


def backend_type(*, allow_auto: bool, allowed: tuple[str, ...]):
    """argparse `type=` that maps every accepted word (aliases included) to its canonical name."""

    def parse(text: str) -> str:
        try:
            return canonical_backend(text, allow_auto=allow_auto, allowed=allowed)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "backend"
    return parse


# ------------------------------------------------------------------------------ argument groups


class ModelArgs:
    """`--model --ckpt --random-weights --weights-seed --image-size --num-classes --flavor --vae` → ModelSpec."""

    @staticmethod
    def add_to(
        parser: argparse.ArgumentParser, *, vae_default: str = "mse. tiny-digits: its own VAE"
    ) -> None:
        g = parser.add_argument_group("model")
        g.add_argument(
            "--model",
            default=None,
            help="DiT-XL/2 … DiT-S/8 (or XL/2), or a shipped model (tiny-digits; see `models`); "
            "inferred from --ckpt when omitted",
        )
        g.add_argument(
            "--ckpt", default=None, help="checkpoint: .pt, .safetensors, diffusers folder or hub id"
        )
        g.add_argument(
            "--random-weights", action="store_true", help="seeded random weights (perturbed adaLN-Zero)"
        )
        g.add_argument("--weights-seed", type=count, default=0, help="seed for --random-weights (default 0)")
        g.add_argument(
            "--image-size",
            type=count,
            default=None,
            help="image side in pixels (default: from the weights, else 256)",
        )
        g.add_argument(
            "--num-classes", type=count, default=None, help="classes of a custom model (default 1000)"
        )
        g.add_argument(
            "--flavor",
            choices=["official", "diffusers"],
            default=None,
            help="numerics: official DiT, or diffusers' port (default: from the checkpoint format)",
        )
        g.add_argument(
            "--vae",
            default=None,
            help="VAE decoder: folder, hub id, ema, mse, none, or random-sd|random-small|random-tiny "
            f"(tests and timing) (default: {vae_default})",
        )

    @staticmethod
    def parse(args: argparse.Namespace, *, vae: str | None = None) -> ModelSpec:
        """The validated spec (cheap checks only: nothing is loaded). `vae`: the command's default."""
        fields = {
            "model": args.model,
            "ckpt": args.ckpt,
            "random_weights": bool(args.random_weights),
            "weights_seed": args.weights_seed,
            "image_size": args.image_size,
            "num_classes": args.num_classes,
            "flavor": args.flavor,
        }
        chosen = args.vae if args.vae is not None else vae
        if chosen is not None:
            fields["vae"] = chosen
        return ModelSpec(**fields).validate()


class RequestArgs:
    """`--classes --seed --cfg-scale --steps --sampler --noise --cache-interval --cache-order` →
    SampleRequest."""

    @staticmethod
    def add_to(
        parser: argparse.ArgumentParser,
        *,
        steps: int | None = 250,
        classes: bool = True,
        seed: bool = True,
        noise: bool = True,
        helps: Mapping[str, str] | None = None,
    ) -> None:
        """`steps=None`: the command fills the default (verify: quick or thorough).
        `helps`: the command's own help text of a flag ({"--seed": "..."})."""
        g = parser.add_argument_group("request")
        said = f"default {steps}" if steps is not None else "default: see above"
        text = {
            "--classes": "class ids, one image each (default: the official 8 for 1000-class models, else all)",
            "--steps": f"sampling steps, 1..1000 ({said})",
            "--cfg-scale": "guidance scale ≥ 1; 1 = no guidance (default 4)",
            "--seed": "noise seed, 0..2**64-1 (default 0)",
            **(helps or {}),
        }
        if classes:
            g.add_argument("--classes", type=count, nargs="+", default=None, help=text["--classes"])
        g.add_argument("--steps", type=count, default=steps, help=text["--steps"])
        g.add_argument("--sampler", choices=samplers.names(), default="ddpm", help=samplers.help_text())
        g.add_argument("--cfg-scale", type=float, default=4.0, help=text["--cfg-scale"])
        if seed:
            g.add_argument("--seed", type=count, default=0, help=text["--seed"])
        if noise:
            g.add_argument(
                "--noise",
                choices=NOISE_KINDS,
                default="philox",
                help="philox: ours, identical on every backend; torch: the official sample.py stream",
            )
        CacheArgs.add_to(parser, g)

    @staticmethod
    def parse(args: argparse.Namespace, num_classes: int | None = None) -> SampleRequest:
        labels = getattr(args, "classes", None)
        if labels is None:
            labels = default_labels(num_classes if num_classes is not None else 1000)
        request = SampleRequest(
            labels=tuple(labels),
            seed=getattr(args, "seed", 0),
            cfg_scale=args.cfg_scale,
            steps=args.steps,
            sampler=args.sampler,
            noise=getattr(args, "noise", "philox"),
            **CacheArgs.fields(args),
        )
        return request.validate(num_classes=num_classes)


class CacheArgs:
    """`--cache-interval N --cache-order O`: the forecast step cache (`sampling.cache`), the two
    `SampleRequest` fields of the same names. Part of `RequestArgs`; alone for commands that build
    their requests themselves (score, bench)."""

    @staticmethod
    def add_to(parser: argparse.ArgumentParser, group=None) -> None:
        g = group if group is not None else parser.add_argument_group("step cache")
        g.add_argument(
            "--cache-interval",
            type=count,
            default=1,
            metavar="N",
            help="forecast cache (TaylorSeer): the first 2 steps and then one step in N run the whole "
            "network, the others forecast its block outputs; 1 = every step full, no caching (default 1)",
        )
        g.add_argument(
            "--cache-order",
            type=count,
            default=DEFAULT_CACHE_ORDER,
            metavar="O",
            help="Taylor order of the forecast with --cache-interval above 1: 0 = reuse (FORA), 1–3 "
            f"(default {DEFAULT_CACHE_ORDER}; at most the export's --max-cache-order)",
        )

    @staticmethod
    def fields(args: argparse.Namespace) -> dict:
        """{cache_interval, cache_order} of the flags given (the defaults where a command has none)."""
        return {
            "cache_interval": getattr(args, "cache_interval", 1),
            "cache_order": getattr(args, "cache_order", DEFAULT_CACHE_ORDER),
        }


def default_labels(num_classes: int) -> list[int]:
    return list(OFFICIAL_LABELS) if num_classes == 1000 else list(range(num_classes))


class BackendArgs:
    """`--backend ort|trt|torch|cpp|auto`: the words a command can run (`allowed`), each with its alias
    (onnxruntime, tensorrt, pytorch, c++) — one vocabulary (`dit_export.backends`) for every command."""

    @staticmethod
    def add_to(
        parser: argparse.ArgumentParser,
        *,
        default: str = "auto",
        allowed: tuple[str, ...] = BACKENDS,
        auto: bool = True,
        help: str | None = None,
        runtime_options: bool = True,
    ) -> None:
        g = parser.add_argument_group("backend")
        words = "|".join((*allowed, "auto") if auto else allowed)
        aliases = aliases_of(allowed)
        said = f"; aliases {', '.join(aliases)}" if aliases else ""
        g.add_argument(
            "--backend",
            type=backend_type(allow_auto=auto, allowed=allowed),
            default=default,
            metavar=words,
            help=(help or "the backend") + f" (default {default}{said})",
        )
        if runtime_options:
            g.add_argument(
                "--providers", nargs="+", default=None, help="onnxruntime providers for --backend ort"
            )
            g.add_argument(
                "--no-cuda-graph", action="store_true", help="trt: no CUDA-graph replay of the step"
            )

    @staticmethod
    def options(args: argparse.Namespace, backend: str) -> dict:
        """Backend keyword options of `Sampler.load` / `verify` for the flags given."""
        opts: dict = {}
        if backend == "trt" and getattr(args, "no_cuda_graph", False):
            opts["cuda_graph"] = False
        return opts


class EnginesArgs:
    """`--engines DIR`: always one export/engines folder (what `export --out` or `build --out` wrote).

    With --engines the folder fixes the model: a command that also has the model flags (`sample`)
    checks them against it (`check_model_flags`): --model, --image-size and --num-classes must say
    what the folder holds (else one line naming both); --ckpt, --random-weights, --weights-seed,
    --flavor and --vae are refused (the weights were fixed when the folder was exported).
    """

    @staticmethod
    def add_to(parser: argparse.ArgumentParser, *, required: bool = False, help: str | None = None) -> None:
        parser.add_argument(
            "--engines",
            default=None,
            required=required,
            metavar="DIR",
            help=help or "an exported/built folder (manifest.json, graphs, plans)",
        )

    @staticmethod
    def open(args: argparse.Namespace, *, model_flags: bool = False):
        """The --engines folder as one `ExportFolder` (its manifest read once, here); with
        `model_flags`, the command's model flags checked against it."""
        from dit_export.runtime.folder import ExportFolder  # the runtime: numpy only

        if model_flags:
            refuse_weight_flags(args)  # cheap first: no folder needed
        folder = ExportFolder.open(args.engines)
        if model_flags:
            check_model_flags(args, folder)
        return folder


# flags of ModelArgs that only choose weights: meaningless with --engines (the folder has its own)
WEIGHT_FLAGS = {"ckpt": None, "random_weights": False, "weights_seed": 0, "flavor": None, "vae": None}


def refuse_weight_flags(args: argparse.Namespace) -> None:
    """--ckpt, --random-weights, --weights-seed, --flavor, --vae given with --engines: one line."""
    for name, default in WEIGHT_FLAGS.items():
        if getattr(args, name, default) != default:
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"{flag} has no effect with --engines {args.engines}: the folder's weights and VAE were "
                f"fixed when it was exported; drop {flag} (or export a folder with it)"
            )


def check_model_flags(args: argparse.Namespace, folder) -> None:
    """The model flags given with --engines against the folder (`EnginesArgs.open`, which has refused
    the weight flags already): one line on a contradiction."""
    from dit_export.models.configs import canonical_name

    m, where = folder.manifest, f"--engines {folder.path}"
    if getattr(args, "model", None) is not None:
        want = canonical_name(args.model)
        have = m.model.spec.get("model") or m.model.name
        if want != have:
            raise UserError(
                f"--model {args.model} contradicts {where}, which holds {have}: drop --model (the folder "
                f"fixes the model) or give a folder exported from {want}"
            )
    for flag, value in (("--image-size", m.image_size), ("--num-classes", m.num_classes)):
        given = getattr(args, flag[2:].replace("-", "_"), None)
        if given is not None and given != value:
            raise UserError(f"{flag} {given} contradicts {where}, which has {value}: drop {flag}")


def add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="fp16: mixed fp16 with fp32 islands; fp32; int8: W8A8 QDQ graphs calibrated on sampler "
        "trajectories (ONNX Runtime CPU, TensorRT); fp8: E4M3 QDQ (TensorRT on Ada/Hopper) "
        f"(default {DEFAULT_PRECISION})",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# ------------------------------------------------------------------------------ handlers


def fields(args: argparse.Namespace, *names: str) -> dict:
    """{name: args.name}: the flags a library call takes under the same names (`--max-batch` → max_batch)."""
    return {name: getattr(args, name) for name in names}


def write_json_output(path: str | os.PathLike | None, obj: object, *, allow_nan: bool = True) -> None:
    """`--json FILE`: write the result atomically and say so (nothing when the flag is absent)."""
    if path:
        write_json(path, obj, allow_nan=allow_nan)
        print(f"wrote {path}")


# ------------------------------------------------------------------------------ outputs


def check_output_file(path: str | os.PathLike | None, flag: str) -> Path | None:
    """Fail before any work when an output file cannot be written (a folder, an unwritable parent)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p} is an existing folder; give a file name (e.g. {p / 'out'})")
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag} {p}: {parent} is not a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p}: folder {parent} is not writable")
    return p


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr)


def engines_backend(folder, word: str) -> str:
    """The backend for a built folder (a path or an `ExportFolder`): `auto` by the folder's one rule
    (`runtime.folder`: TensorRT when it works here and the folder has plans for this GPU, else ONNX
    Runtime); any other word is already canonical."""
    if word != "auto":
        return word
    from dit_export.runtime.folder import ExportFolder

    return ExportFolder.of(folder).choose_backend("auto")[0]
