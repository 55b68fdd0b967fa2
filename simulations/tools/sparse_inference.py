"""``python -m simulations.tools.sparse_inference RUN_DIR...``: re-measure finished runs.

Dense vs CSR inference throughput of each run's final model (:mod:`clients.sparse_inference`).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Re-measure a finished run: ``python -m simulations.tools.sparse_inference RUN_DIR...``.

    Reads each run's ``.hydra/config.yaml`` and ``final_model.npz`` and prints one
    JSON line of throughputs (a longer window than the end-of-run measurement).
    """
    import argparse
    import json
    from pathlib import Path

    import numpy as np
    from omegaconf import OmegaConf

    from clients.methods import load_arrays
    from clients.models import build_from_dims, model_dims
    from clients.sparse_inference import inference_report

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)
        dims = model_dims(cfg)
        model = build_from_dims(dims)
        with np.load(run_dir / "final_model.npz") as final:
            load_arrays(model, {k: final[k] for k in final.files})
        shape = (dims["in_channels"], dims["image_size"], dims["image_size"])
        report = inference_report(model, shape, seconds=args.seconds, threads=args.threads)
        print(json.dumps({"run": str(run_dir), **report}))


if __name__ == "__main__":
    main()
