"""``python -m simulations.tools.zerofl_wire``: ZeroFL's uplink bytes vs SWAT's for one model, no training.

Builds the model at its initialisation, takes what a ``topk_weights`` reply sends at
round 1 (the top-``density`` weights of every SWAT layer, everything else dense) or,
with ``--values gaussian-update``, the top-``density`` entries of an i.i.d. Gaussian
update (i.i.d. positions: no structure for the position coder to find), encodes it as a
client does (:func:`fl_strategies.zerofl.pack_sent`, :func:`fl_strategies.codec.encode_arrays`)
and prints one JSON line: the serialized bytes of that reply and of SWAT-in-FL's dense
one, their ratio, and the analytic ratio of an ideal coder (values at 32 bits, positions
at the binary entropy of the density).
"""

from __future__ import annotations


def _entropy_bits(density: float) -> float:
    import math

    if density in (0.0, 1.0):
        return 0.0
    return -(density * math.log2(density) + (1 - density) * math.log2(1 - density))


def main(argv: list[str] | None = None) -> None:
    """Print the measured and analytic uplink ratio of one reply (see the module docstring)."""
    import argparse
    import json

    import numpy as np
    from flwr.app import Message, MetricRecord, RecordDict

    from clients.models import build_model
    from clients.swat import swat_layer_names
    from fl_strategies.codec import encode_arrays
    from fl_strategies.flwr_compat import set_task_identity
    from fl_strategies.swat import topk_keep_count
    from fl_strategies.wire import message_bytes
    from fl_strategies.zerofl import pack_sent, topk_exact

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--values",
        choices=("weights", "gaussian-update"),
        default="weights",
        help="send the initial weights' top-K (topk_weights at round 1), or the top-K of an "
        "i.i.d. Gaussian update (topk_diff with positions of maximal entropy)",
    )
    args = parser.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_model(args.model, args.channels, args.classes, args.image_size)
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    sparse_keys = {name + ".weight" for name in swat_layer_names(model)}
    payload: dict[str, np.ndarray] = {}
    sparse_params = dense_params = 0
    for key, value in arrays.items():
        if key in sparse_keys:
            if args.values == "gaussian-update":
                value = (rng.standard_normal(value.shape) * 1e-3).astype(value.dtype)
            payload.update(pack_sent(key, value, topk_exact(value, args.density)))
            sparse_params += value.size
        else:
            payload[key] = value
            dense_params += value.size if value.dtype.kind == "f" else 0

    set_task_identity(run_id=1, node_id=1, task_id=1)  # a Message outside a Flower run needs one

    def reply_bytes(record_arrays: dict[str, np.ndarray]) -> int:
        content = RecordDict(
            {"arrays": encode_arrays(record_arrays), "metrics": MetricRecord({"num-examples": 1})}
        )
        return message_bytes(Message(content, dst_node_id=1, message_type="train"))

    zerofl, swat = reply_bytes(payload), reply_bytes(arrays)
    sent = sum(topk_keep_count(arrays[k].size, args.density) for k in sparse_keys)
    ideal_bits = 32 * dense_params + 32 * sent + _entropy_bits(args.density) * sparse_params
    print(
        json.dumps(
            {
                "model": args.model,
                "density": args.density,
                "values": args.values,
                "params_sparsified": sparse_params,
                "params_dense": dense_params,
                "bytes_swat": swat,
                "bytes_zerofl": zerofl,
                "ratio_measured": round(swat / zerofl, 3),
                "ratio_ideal_float32": round(32 * (sparse_params + dense_params) / ideal_bits, 3),
                "ratio_bitmask_float32": round(
                    32 * (sparse_params + dense_params) / (32 * dense_params + 32 * sent + sparse_params), 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
