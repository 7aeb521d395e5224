"""`llmgate weights quant | cut`: the source documents' `handle_weights.py` (quant, cut_float,
cut_quant) for any registered family.

    llmgate weights quant IN OUT --scheme w8a8        int8 weights + scales, loadable as is
    llmgate weights cut IN OUT --world-size 2         OUT/part_model/{0,1}/, float or quantized

The documents' own command line works too, with their meaning (the Bloom document's W8A8
weights, split over its two chips):

    llmgate weights --input-path IN --output-path OUT --handle-type cut_float   # = cut, 2 ranks
    llmgate weights --input-path IN --output-path OUT --handle-type quant       # = quant, w8a8
    llmgate weights --input-path IN --output-path OUT --handle-type cut_quant   # = cut, 2 ranks

cut_float takes float weights and cut_quant quantized ones, as the documents use them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from harness.cache import follow_umask
from models import ported
from models.checkpoint import CheckpointError, check_not_modelslim, read_config, read_json
from models.loading import build_model, model_config
from models.parallel import SplitError, check_world_size
from models.precision import DTYPE_NAMES, DTYPES, Precision
from models.quant import SCHEMES, quantized_modules

HANDLE_TYPES = ("cut_float", "quant", "cut_quant")


def add_parser(sub) -> None:
    weights = sub.add_parser("weights", help="quantize or split a checkpoint (handle_weights)",
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog=__doc__.split("\n\n", 1)[1])
    weights.add_argument("--handle-type", choices=HANDLE_TYPES,
                         help="the source documents' handle_weights.py: cut_float or cut_quant "
                              "split over their two chips, quant writes w8a8")
    weights.add_argument("--input-path", type=Path, metavar="IN")
    weights.add_argument("--output-path", type=Path, metavar="OUT")
    actions = weights.add_subparsers(dest="action")
    quant = actions.add_parser("quant", help="write an int8 checkpoint (per-channel weights)")
    quant.add_argument("--scheme", choices=tuple(SCHEMES), required=True,
                       help="w8a16: int8 weights, 16-bit activations; w8a8: int8 weights and "
                            "per-token int8 activations")
    quant.add_argument("--quantize-lm-head", action="store_true",
                       help="quantize the LM head too (default: every linear layer but it)")
    cut = actions.add_parser("cut", help="split a float or quantized checkpoint into "
                                         "OUT/part_model/{rank}/ for tensor parallelism")
    cut.add_argument("--world-size", type=int, required=True, metavar="N")
    for parser in (quant, cut):
        parser.add_argument("input", metavar="IN", type=Path, help="a checkpoint directory")
        parser.add_argument("output", metavar="OUT", type=Path)
        parser.add_argument("--force", action="store_true", help="write into a non-empty OUT")
        parser.add_argument("--dtype", choices=tuple(DTYPES),
                            help="float dtype of what is written (default: the input's "
                                 "torch_dtype, else fp32)")


def from_handle_type(args: argparse.Namespace) -> argparse.Namespace:
    """The documents' --handle-type command line as the quant or cut command it means."""
    given = [name for name in ("handle_type", "input_path", "output_path")
             if getattr(args, name) is not None]
    if args.action is not None:
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} is handle_weights.py's form; "
                             f"give `weights {args.action} IN OUT` or that form, not both")
        return args
    missing = [f"--{n.replace('_', '-')}" for n in ("handle_type", "input_path", "output_path")
               if n not in given]
    if missing:
        raise ValueError("expected `weights quant|cut IN OUT`, or handle_weights.py's "
                         "--input-path IN --output-path OUT --handle-type "
                         f"{'|'.join(HANDLE_TYPES)} (missing {', '.join(missing)})")
    quantized = (args.input_path / "config.json").is_file() and ported.scheme_of(
        read_json(args.input_path / "config.json"))
    if args.handle_type == "cut_float" and quantized:
        raise ValueError(f"--handle-type cut_float: {args.input_path} holds {quantized} "
                         "weights; cut_quant splits quantized ones")
    if args.handle_type == "cut_quant" and (args.input_path / "config.json").is_file() \
            and not quantized:
        raise ValueError(f"--handle-type cut_quant: {args.input_path} holds float weights; "
                         "cut_float splits them, or quantize first with --handle-type quant")
    common = dict(input=args.input_path, output=args.output_path, force=False, dtype=None)
    if args.handle_type == "quant":
        return argparse.Namespace(action="quant", scheme="w8a8", quantize_lm_head=False,
                                  **common)
    return argparse.Namespace(action="cut", world_size=2, **common)


def main(args: argparse.Namespace) -> int:
    try:
        for path in (args.input_path, getattr(args, "input", None)):
            if path is not None and Path(path).is_dir():
                check_not_modelslim(path)
        args = from_handle_type(args)
        if args.input.exists() and not args.input.is_dir():
            raise ValueError(f"{args.input}: not a checkpoint directory")
        dtype = DTYPES[args.dtype] if args.dtype else _input_dtype(args.input)
        if args.action == "cut":
            if args.world_size < 1:
                raise ValueError(f"--world-size {args.world_size}: expected an integer >= 1")
            check_world_size(model_config(read_config(args.input), args.input.name),
                             args.world_size)
        out = _empty_output(args.output, args.force)  # only once the input is readable
        if args.action == "quant":
            code = quant(args.input, out, args.scheme, args.quantize_lm_head, dtype)
        else:
            code = cut(args.input, out, args.world_size, dtype)
        follow_umask(out)
        return code
    except (CheckpointError, SplitError, ValueError) as e:
        print(f"llmgate weights{' ' + args.action if args.action else ''}: {e}",
              file=sys.stderr)
        return 2


def _empty_output(out: Path, force: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ValueError(f"{out}: exists and is not empty; choose another OUT or --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out}: cannot create it ({e.strerror})") from None
    return out


def _input_dtype(path: Path) -> torch.dtype:
    config = read_json(Path(path) / "config.json")
    name = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name, torch.float32)


def _whole_config(path: Path) -> dict:
    """config.json of a checkpoint that is not split for tensor parallelism."""
    config = read_json(path / "config.json")
    if (path / "part_model").is_dir() or ported.tensor_parallel_of(config):
        raise ValueError(f"{path}: already split for tensor parallelism; give the whole "
                         "checkpoint")
    return config


def quant(source: Path, out: Path, scheme: str, lm_head: bool, dtype: torch.dtype) -> int:
    stored = ported.scheme_of(_whole_config(source))
    if stored:
        raise ValueError(f"{source}: already quantized ({stored})")
    # quantized from float32, then the rest cast to `dtype`
    model = build_model(source, Precision(scheme, dtype, scheme), lm_head=lm_head, cpu_dense=False)
    modules = quantized_modules(model)
    ported.save(model, out, source, quantization={"quant_method": ported.QUANT_METHOD,
                                                  "scheme": scheme, "modules": modules})
    print(f"wrote {out}: {scheme}, {len(modules)} layers quantized")
    return 0


def cut(source: Path, out: Path, world_size: int, dtype: torch.dtype) -> int:
    scheme = ported.scheme_of(_whole_config(source))
    precision = Precision(scheme or DTYPE_NAMES[dtype], dtype, scheme)
    for rank in range(world_size):  # one rank in memory at a time
        part = build_model(source, precision, rank=rank, world_size=world_size,
                           cpu_dense=False)
        directory = out / "part_model" / str(rank)
        directory.mkdir(parents=True, exist_ok=True)
        ported.save(part, directory, source,
                    tensor_parallel={"rank": rank, "world_size": world_size})
    print(f"wrote {out}/part_model/{{0..{world_size - 1}}}")
    return 0
