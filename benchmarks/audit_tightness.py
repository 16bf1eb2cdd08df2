"""How tight the one-run audit is at CPU scale: lower bound vs claimed epsilon, with and without faults.

    python benchmarks/audit_tightness.py [--canaries 800] [--settings tests|wide|quickstart] [--only ROW ...]

`tests`: the settings of tests/audit (200 digits, tiny D4 model with 894 parameters, q = 1 and
one step, or q = 0.25 and 8 steps); `wide`: the same data with a wider model (layout 8/8/8,
4,674 parameters), so that more canaries fit and the real gradients interfere less;
`quickstart`: configs/quickstart.yaml as shipped (q = 0.16, 95 steps). Prints one row per run;
`--only` runs just the rows of those names (e.g. "q=1 T=1 eps=1.0" "q=1 T=1 eps=1 no_noise").
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from eqdp_ray.audit import run_audit
from eqdp_ray.config import load_config, parse_config
from eqdp_ray.data import load_dataset
from eqdp_ray.privacy import _faults, format_epsilon, format_lower_bound

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
# about 200 digits are kept (a per-example hash decides), less the validation split
TRAIN_SIZE = len(load_dataset("digits", None, val_size=0.1, seed=0, train_subset=200).train_y)


def config(epsilon, batch_size, steps, layout):
    return parse_config(
        {
            "name": "audit-bench",
            "seed": 0,
            "data": {"name": "digits", "train_subset": 200, "val_size": 0.1},
            "model": {
                "name": "eq_resnet9",
                "options": {"group": "dihedral", "order": 4, "layout": layout, "num_groups": 2},
            },
            "privacy": {"target_epsilon": epsilon, "delta": 1e-5, "max_grad_norm": 1.0, "secret_seed": 7},
            "training": {
                "batch_size": batch_size,
                "steps": steps,
                "crop_padding": 1,
                "lr": 0.5,
                "ema_decay": None,
                "physical_batch_size": 256,
                "eval_every": 1000,
            },
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--canaries", type=int, default=800)
    parser.add_argument("--settings", default="tests", choices=["tests", "wide", "quickstart"])
    parser.add_argument("--only", nargs="+", metavar="ROW", help="run only the rows of these names (default: all)")
    args = parser.parse_args(argv)
    layout = [2, 4, 4] if args.settings == "tests" else [8, 8, 8]
    runs = []
    if args.settings == "quickstart":
        for eps in (1.0, 4.0, 8.0):
            runs.append(
                (
                    f"quickstart eps={eps}",
                    load_config(QUICKSTART, [f"privacy.target_epsilon={eps}"]),
                    None,
                    {},
                )
            )
    else:
        for eps in (1.0, 4.0, 8.0):
            runs.append((f"q=1 T=1 eps={eps}", config(eps, TRAIN_SIZE, 1, layout), None, {}))
        for fault, params in (("no_noise", {}), ("noise_scale", {"factor": 0.1}), ("no_clipping", {})):
            runs.append((f"q=1 T=1 eps=1 {fault}", config(1.0, TRAIN_SIZE, 1, layout), fault, params))
        for eps in (1.0, 4.0, 8.0):
            runs.append((f"q=0.25 T=8 eps={eps}", config(eps, TRAIN_SIZE // 4, 8, layout), None, {}))
        runs.append(("q=0.25 T=8 eps=1 reused_noise", config(1.0, TRAIN_SIZE // 4, 8, layout), "reused_noise", {}))
    if args.only:
        unknown = [name for name in args.only if name not in {run[0] for run in runs}]
        if unknown:
            parser.error(f"no row {unknown} in --settings {args.settings}; rows: {', '.join(r[0] for r in runs)}")
        runs = [run for run in runs if run[0] in args.only]
    print("| setting | M | claimed eps | lower bound (95%) | guesses right | score | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, cfg, fault, params in runs:
        started = time.time()
        with _faults._inject(fault, **params) if fault else contextlib.nullcontext():
            r = run_audit(cfg, canaries=args.canaries, coin_seed=3, log=None)
        print(
            f"| {name} | {args.canaries} | {format_epsilon(r['claimed_epsilon'])} | {format_lower_bound(r['epsilon_lower_bound'])} | "
            f"{r['correct']}/{r['guesses_in'] + r['guesses_out']} | {r['winning_score']} | {time.time() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
