"""FedGKT: KD loss, per-sample logit alignment, per-node logits, reply validation, costs."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.methods.base import ClientJob
from clients.methods.fedgkt import (
    EDGE_STATE_KEY,
    OPTIMIZER_STATE_KEY,
    FedGKTClient,
    GKTServer,
    from_record,
    kd_loss,
    teacher_table,
    with_indices,
)
from clients.models import model_dims
from clients.train import make_optimizer
from fl_strategies.base import numpy_to_arrayrecord
from fl_strategies.codec import decode_arrays, encode_arrays
from fl_strategies.fedgkt import (
    FEATURES_KEY,
    INDICES_KEY,
    KD_ACTIVE_KEY,
    LABELS_KEY,
    LOGITS_KEY,
    REPLY_KEYS,
    TEST_FEATURES_KEY,
    TEST_LABELS_KEY,
    FedGKT,
    softmax_loss_accuracy,
)
from methods import BuildContext, get_method
from simulations import CONF_DIR
from simulations.app.client_app import app as client_app
from simulations.app.compose import client_settings
from simulations.app.config import ConfigError
from simulations.runtimes.inline import InlineGrid
from simulations.tools.gkt_costs import PAPER_FLOPS_RATIO, PAPER_PARAMS_RATIO, edge_cost_table

NUM_CLASSES = 10


# ------------------------------------------------------------------- KD loss
def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, -1.0]])
    temperature = 2.0

    def softmax(row):
        e = [math.exp(v / temperature) for v in row]
        return [v / sum(e) for v in e]

    per_row = []
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        p, q = softmax(t), softmax(s)  # KL(teacher || student)
        per_row.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    expected = temperature**2 * sum(per_row) / len(per_row)  # batch mean
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-5)


def test_kd_loss_gradient_reaches_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    kd_loss(student, teacher, 3.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


# --------------------------------------------------- per-sample alignment
def test_teacher_table_orders_rows_by_sample_index_and_rejects_bad_indices():
    logits = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = teacher_table(np.array([2, 0, 3, 1]), logits, 4)
    np.testing.assert_array_equal(table.numpy()[[2, 0, 3, 1]], logits)
    for bad in ([0, 1, 2, 2], [0, 1, 2, 4], [0, 1, 2]):
        with pytest.raises(ValueError):
            teacher_table(np.array(bad), logits[: len(bad)], 4)


def _settings(**method):
    return {
        "method": {
            "name": "fedgkt",
            "temperature": 3.0,
            "alpha": 0.5,
            "epochs_client": 1,
            "float16": True,
            **method,
        },
        "model": {"name": "resnet8_56", "in_channels": 1, "num_classes": NUM_CLASSES, "image_size": 8},
        "train": {"epochs": 1, "batch_size": 5, "optimizer": "adam", "lr": 1e-3},
        "seed": 0,
    }


def test_kd_targets_follow_their_samples_under_a_shuffled_loader():
    n = 23
    # Sample i is an image filled with the value i, so a batch tells which samples it holds.
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()
    train_set = TensorDataset(images, torch.arange(n) % NUM_CLASSES)
    rng = np.random.default_rng(0)
    server_logits = rng.normal(size=(n, NUM_CLASSES)).astype(np.float32)  # row i: sample i
    order = rng.permutation(n)  # the server may send them in any order
    content = RecordDict(
        {
            "arrays": encode_arrays({INDICES_KEY: order, LOGITS_KEY: server_logits[order]}),
            "config": ConfigRecord(),
        }
    )
    settings = _settings()
    job = ClientJob(
        settings=settings,
        model=nn.Identity(),
        train_set=train_set,
        test_set=train_set,
        device=torch.device("cpu"),
        content=content,
        context=Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={}),
        server_round=2,
        partition_id=0,
    )
    client = FedGKTClient(settings)
    client.receive(job)
    job.train_set = with_indices(job.train_set)
    (term,) = client.train_hooks(job).loss_terms

    seen_orders = []
    for batch in job.loader(train=True):
        samples = batch[0][:, 0, 0, 0].long()  # which samples are in this batch
        seen_orders.extend(samples.tolist())
        student = torch.randn(len(samples), NUM_CLASSES)
        expected = 0.5 * kd_loss(student, torch.from_numpy(server_logits)[samples], 3.0)
        assert term(job.model, student, batch).item() == pytest.approx(expected.item(), rel=1e-3)
    # The loader really shuffled: keying targets by batch position would misalign them.
    assert sorted(seen_orders) == list(range(n)) and seen_orders != list(range(n))


# ------------------------------------------------------ round trip (Inline)
def _tiny_server_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(16, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )


def _run_cfg():
    return {
        "method": {
            "name": "fedgkt",
            "temperature": 3.0,
            "alpha": 1.0,
            "epochs_client": 1,
            "epochs_server": 1,
            "distill_on_server": True,
            "float16": True,
            "server_model": "resnet56_server",
            "server_optimizer": "adam",
            "server_lr": 1e-3,
        },
        "dataset": {"name": "digits", "resize": None, "test_fraction": 0.2},
        "partition": {"name": "dirichlet", "alpha": 1.0},
        "model": {"name": "resnet8_56"},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "local_epochs": 1,
        "batch_size": 32,
        "seed": 0,
        "device": "cpu",
    }


def test_two_client_round_trip_each_client_gets_only_its_own_logits():
    model = _tiny_server_model()
    server = GKTServer(
        model,
        make_optimizer(model.parameters(), "adam", 1e-3),
        torch.device("cpu"),
        temperature=3.0,
        alpha=1.0,
        epochs=1,
        batch_size=32,
        feature_shape=(16, 8, 8),
    )
    strategy = FedGKT(
        server=server,
        num_classes=NUM_CLASSES,
        feature_shape=(16, 8, 8),
        client_config=client_settings(_run_cfg()),
        min_available_nodes=2,
        min_train_nodes=2,
        fraction_evaluate=0.0,
    )
    received: dict[tuple[int, int], dict] = {}
    uploaded: dict[tuple[int, int], dict] = {}
    replies: dict[tuple[int, int], MetricRecord] = {}

    def spy(message, context):
        key = (int(message.content.config_records["config"]["server-round"]), context.node_id)
        received[key] = decode_arrays(message.content.array_records["arrays"])
        reply = client_app(message, context)
        uploaded[key] = decode_arrays(reply.content.array_records["arrays"])
        replies[key] = reply.content.metric_records["metrics"]
        return reply

    grid = InlineGrid(spy, 2)
    for context in grid.contexts.values():  # a tenth of digits each keeps the test fast
        context.node_config["num-partitions"] = 10
    records, kept = [], {}

    def on_round_end(record):
        records.append(record)
        kept[record["round"]] = {n: (i.copy(), z.copy()) for n, (i, z) in strategy.server_logits.items()}

    result = strategy.start(grid, numpy_to_arrayrecord({}), num_rounds=2, on_round_end=on_round_end)

    a, b = grid.node_ids
    assert received[(1, a)] == {} and received[(1, b)] == {}  # no logits before round 1
    assert len(uploaded[(1, a)][INDICES_KEY]) != len(uploaded[(1, b)][INDICES_KEY])
    for node in (a, b):
        up, down = uploaded[(1, node)], received[(2, node)]
        assert set(down) == {INDICES_KEY, LOGITS_KEY}
        # Labels and indices uploaded are the node's training split, in index order ...
        np.testing.assert_array_equal(up[INDICES_KEY], np.arange(len(up[LABELS_KEY])))
        # ... and round 2 brings back exactly those indices with the server's logits for
        # this node's own round-1 features (float16 on the wire), nobody else's.
        np.testing.assert_array_equal(down[INDICES_KEY], up[INDICES_KEY])
        indices, logits = kept[1][node]
        np.testing.assert_array_equal(indices, up[INDICES_KEY])
        np.testing.assert_allclose(down[LOGITS_KEY], logits, rtol=1e-2, atol=1e-2)
        assert replies[(1, node)][KD_ACTIVE_KEY] == 0 and replies[(2, node)][KD_ACTIVE_KEY] == 1
    assert not np.allclose(kept[1][a][1][:5], kept[1][b][1][:5])
    # The edge model and its optimizer persist: Adam's step counter spans both rounds.
    steps_per_round = {node: math.ceil(len(uploaded[(1, node)][LABELS_KEY]) / 32) for node in (a, b)}
    for node in (a, b):
        state = grid.contexts[node].state.array_records
        assert EDGE_STATE_KEY in state
        steps = from_record(state[OPTIMIZER_STATE_KEY])["0.step"]
        assert int(steps) == 2 * steps_per_round[node]
    assert records[2]["bytes_down"] > records[1]["bytes_down"]  # logits only go down from round 2
    assert records[2]["bytes_up"] > 20 * records[2]["bytes_down"]  # features dominate
    assert 0.0 <= records[2]["accuracy"] <= 1.0 and "edge_accuracy" in records[2]
    assert set(result.arrays.keys()) == set(model.state_dict().keys())  # final = server model
    # Edge FLOPs per round: the clients' training and eval-mode extraction, summed over clients.
    for t in (1, 2):
        for key in ("edge-flops-train", "edge-flops-extract"):
            assert records[t][key.replace("-", "_")] == sum(replies[(t, n)][key] for n in (a, b)) > 0
    summary = strategy.summary_fields()
    assert summary["edge_flops_per_round"] == pytest.approx(
        summary["edge_flops_train_per_round"] + summary["edge_flops_extract_per_round"]
    )
    assert summary["edge_flops_train_per_sample"] == replies[(1, a)]["edge-flops-train-per-sample"] > 0


def test_logits_sent_to_each_node_are_that_nodes_own():
    class FakeServer:
        def fit(self, features, labels, client_logits, server_round):
            return {}

        def predict(self, features):  # logits that identify the features they came from
            return np.repeat(features.reshape(len(features), -1)[:, :1], NUM_CLASSES, axis=1)

        def state(self):
            return {"w": np.zeros(1, np.float32)}

        def describe(self):
            return {}

    strategy = FedGKT(
        server=FakeServer(),
        num_classes=NUM_CLASSES,
        feature_shape=(2,),
        min_available_nodes=2,
        min_train_nodes=2,
        fraction_evaluate=0.0,
    )
    seen = {}

    def client(message, context):
        node = context.node_id
        seen.setdefault(node, []).append(decode_arrays(message.content.array_records["arrays"]))
        n = 3 + (node % 2)
        indices = np.arange(n)[::-1].copy()
        features = np.full((n, 2), float(node), np.float32) + indices[:, None]
        return Message(
            RecordDict(
                {
                    "arrays": encode_arrays(_upload(n, features, indices)),
                    "metrics": MetricRecord({"num-examples": n}),
                }
            ),
            reply_to=message,
        )

    grid = InlineGrid(client, 2)
    strategy.start(grid, numpy_to_arrayrecord({}), num_rounds=2)
    for node in grid.node_ids:
        down = seen[node][1]
        # Each row's logit is node + index: its own sample, matched by index.
        np.testing.assert_allclose(down[LOGITS_KEY][:, 0], node + down[INDICES_KEY])


# --------------------------------------------------------- reply validation
def _upload(n, features=None, indices=None, num_test=2):
    return {
        FEATURES_KEY: features if features is not None else np.ones((n, 2), np.float32),
        LOGITS_KEY: np.zeros((n, NUM_CLASSES), np.float32),
        LABELS_KEY: np.arange(n) % NUM_CLASSES,
        INDICES_KEY: indices if indices is not None else np.arange(n),
        TEST_FEATURES_KEY: np.ones((num_test, 2), np.float32),
        TEST_LABELS_KEY: np.zeros(num_test, np.int64),
    }


BAD_UPLOADS = {
    "feature shape": lambda u: {**u, FEATURES_KEY: np.ones((4, 3), np.float32)},
    "count": lambda u: {**u, LOGITS_KEY: np.zeros((3, NUM_CLASSES), np.float32)},
    "non-finite": lambda u: {**u, LOGITS_KEY: np.full((4, NUM_CLASSES), np.nan, np.float32)},
    "labels outside": lambda u: {**u, LABELS_KEY: np.array([0, 1, 2, NUM_CLASSES])},
    "duplicate": lambda u: {**u, INDICES_KEY: np.array([0, 1, 1, 2])},
    "dtype": lambda u: {**u, FEATURES_KEY: np.ones((4, 2), np.int32)},
    "missing": lambda u: {k: v for k, v in u.items() if k != TEST_LABELS_KEY},
}


def test_bad_uploads_are_dropped_with_a_log_line(caplog):
    fitted = []

    class RecordingServer:
        def fit(self, features, labels, client_logits, server_round):
            fitted.append(len(features))
            return {}

        def predict(self, features):
            return np.zeros((len(features), NUM_CLASSES), np.float32)

        def state(self):
            return {"w": np.zeros(1, np.float32)}

        def describe(self):
            return {}

    kinds = list(BAD_UPLOADS)

    def client(message, context):
        index = context.node_config["partition-id"]
        upload = _upload(4)
        if index < len(kinds):
            upload = BAD_UPLOADS[kinds[index]](upload)
        return Message(
            RecordDict({"arrays": encode_arrays(upload), "metrics": MetricRecord({"num-examples": 4})}),
            reply_to=message,
        )

    num_nodes = len(kinds) + 1
    strategy = FedGKT(
        server=RecordingServer(),
        num_classes=NUM_CLASSES,
        feature_shape=(2,),
        min_available_nodes=num_nodes,
        min_train_nodes=num_nodes,
        fraction_evaluate=0.0,
    )
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.start(InlineGrid(client, num_nodes), numpy_to_arrayrecord({}), num_rounds=1)
    text = "\n".join(strategy.dropped[1])
    assert len(strategy.dropped[1]) == len(kinds)
    for needle in ["shape", "non-finite", "labels outside", "duplicate", "dtype", "missing"]:
        assert needle in text, needle
    assert fitted == [4]  # the server trained on the one good upload only
    assert sum("dropped reply" in r.getMessage() for r in caplog.records) == len(kinds)
    assert set(REPLY_KEYS) == set(_upload(1))


def test_softmax_loss_accuracy_by_hand():
    logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    loss, accuracy = softmax_loss_accuracy(logits, np.array([0, 1]))
    assert accuracy == 0.5
    assert loss == pytest.approx((math.log(2) + (2 + math.log(1 + math.exp(-2)))) / 2)


# ------------------------------------------------------------- composition
def _build_fedgkt(cfg, common):
    entry = get_method("fedgkt")
    ctx = BuildContext(run=cfg, common=common, dims=model_dims(cfg))
    return entry.build(entry.config(**cfg["method"]), ctx)


def test_builder_rejects_models_without_features_and_builds_the_server():
    cfg = _run_cfg()
    common = {"client_config": client_settings(cfg), "min_available_nodes": 2}
    strategy = _build_fedgkt(cfg, common)
    assert strategy.feature_shape == (16, 8, 8)
    assert strategy.server.describe()["server_params"] == 590_858
    cfg["model"]["name"] = "mlp"
    with pytest.raises(ConfigError, match="model.name='mlp'"):
        _build_fedgkt(cfg, {"client_config": client_settings(cfg)})


def test_experiment_configs_compose():

    from hydra import compose, initialize_config_dir

    conf = str(CONF_DIR)
    with initialize_config_dir(config_dir=conf, version_base=None):
        for name, dataset in [
            ("fedgkt_cifar10", "cifar10"),
            ("fedgkt_cifar100", "cifar100"),
            ("fedgkt_cinic10", "cinic10"),
            ("fedgkt_digits", "digits"),
        ]:
            cfg = compose("config", overrides=[f"+experiment={name}"])
            assert cfg.method.name == "fedgkt" and cfg.model.name == "resnet8_56"
            assert cfg.dataset.name == dataset and not cfg.central_eval
        cfg = compose("config", overrides=["+experiment=fedgkt_cifar10"])
        assert (cfg.num_clients, cfg.num_rounds, cfg.batch_size) == (8, 200, 256)
        assert (cfg.method.temperature, cfg.method.epochs_server, cfg.optimizer.name) == (3.0, 20, "adam")


def test_edge_costs_meet_the_papers_lower_bounds():
    edge, resnet56, resnet110 = edge_cost_table()
    assert edge["params"] == 10_586
    assert resnet56["params_ratio"] >= PAPER_PARAMS_RATIO and resnet56["flops_ratio"] >= PAPER_FLOPS_RATIO
    assert resnet110["params_ratio"] > resnet56["params_ratio"]
    assert resnet110["flops_ratio"] > resnet56["flops_ratio"]


def test_loader_with_indices_yields_positions():
    data = TensorDataset(torch.zeros(5, 1), torch.zeros(5, dtype=torch.long))
    (batch,) = list(DataLoader(with_indices(data), batch_size=5))
    assert batch[2].tolist() == [0, 1, 2, 3, 4]


# ------------------------------------------------ server loss, extraction, costs
def test_server_loss_is_kd_plus_alpha_times_ce_as_in_fedml():
    """One full-batch SGD step of ``GKTServer.fit`` equals a step on ``KD + alpha * CE``."""
    torch.manual_seed(0)
    n, alpha, temperature, lr = 12, 0.3, 2.0, 0.5
    features = torch.randn(n, 4)
    labels = torch.randint(0, 3, (n,))
    client_logits = 3 * torch.randn(n, 3)
    model = nn.Linear(4, 3)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def stepped(loss_fn):
        ref = nn.Linear(4, 3)
        ref.load_state_dict(start)
        loss = loss_fn(ref(features))
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        return [p.detach() - lr * g for p, g in zip(ref.parameters(), grads, strict=True)]

    fedml = stepped(
        lambda z: kd_loss(z, client_logits, temperature) + alpha * nn.functional.cross_entropy(z, labels)
    )
    swapped = stepped(
        lambda z: alpha * kd_loss(z, client_logits, temperature) + nn.functional.cross_entropy(z, labels)
    )
    server = GKTServer(
        model,
        make_optimizer(model.parameters(), "sgd", lr),
        torch.device("cpu"),
        temperature=temperature,
        alpha=alpha,
        epochs=1,
        batch_size=n,
        feature_shape=(4,),
    )
    server.fit(features.numpy(), labels.numpy(), client_logits.numpy(), server_round=1)
    for got, want, other in zip(model.parameters(), fedml, swapped, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got.detach(), other, atol=1e-4)  # the weighting is observable


def _edge_job(settings, n_train=20, n_test=7, state=None):
    torch.manual_seed(1)
    train = TensorDataset(torch.randn(n_train, 1, 8, 8) * 2 + 1, torch.randint(0, NUM_CLASSES, (n_train,)))
    test = TensorDataset(torch.randn(n_test, 1, 8, 8) * 2 + 1, torch.randint(0, NUM_CLASSES, (n_test,)))
    content = RecordDict({"arrays": encode_arrays({}), "config": ConfigRecord({"server-round": 1})})
    return ClientJob(
        settings=settings,
        model=nn.Identity(),
        train_set=train,
        test_set=test,
        device=torch.device("cpu"),
        content=content,
        context=Context(run_id=1, node_id=3, node_config={}, state=state or RecordDict(), run_config={}),
        server_round=1,
        partition_id=0,
    )


def test_features_are_extracted_in_eval_mode_and_leave_batchnorm_statistics_alone():
    from clients.models import build_from_dims

    settings = _settings(float16=False)
    job = _edge_job(settings)
    reply = FedGKTClient(settings).train(job)
    saved = from_record(job.context.state.array_records[EDGE_STATE_KEY])
    # Extraction ran after the edge model was saved: it must not have moved BatchNorm's statistics.
    for name, value in job.model.state_dict().items():
        if "running" in name or "num_batches" in name:
            np.testing.assert_array_equal(value.numpy(), saved[name], err_msg=name)
    # The uploaded features are the saved edge model's eval-mode outputs, sample by sample.
    edge = build_from_dims(settings["model"])
    edge.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in saved.items()})
    edge.eval()
    up = decode_arrays(reply.array_records["arrays"])
    with torch.no_grad():
        logits, features = edge(job.train_set.tensors[0])
        _, test_features = edge(job.test_set.tensors[0])
    np.testing.assert_allclose(up[FEATURES_KEY], features.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(up[LOGITS_KEY], logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(up["test-features"], test_features.numpy(), rtol=1e-4, atol=1e-5)


def test_edge_flops_of_a_round_include_extraction_over_train_and_test_images():
    from clients.flops import count_flops
    from clients.models import build_from_dims
    from fl_strategies.fedgkt import EDGE_FLOPS_EXTRACT_KEY, EDGE_FLOPS_SAMPLE_KEY, EDGE_FLOPS_TRAIN_KEY

    settings = _settings(epochs_client=2)
    job = _edge_job(settings, n_train=20, n_test=7)
    metrics = FedGKTClient(settings).train(job).metric_records["metrics"]
    sample = torch.zeros(1, 1, 8, 8)
    model = build_from_dims(settings["model"])
    forward, train = count_flops(model, sample, training=False), count_flops(model, sample, training=True)
    assert metrics[EDGE_FLOPS_SAMPLE_KEY] == train
    assert metrics[EDGE_FLOPS_TRAIN_KEY] == train * 20 * 2
    assert metrics[EDGE_FLOPS_EXTRACT_KEY] == forward * (20 + 7)
    # The cost tool's per-round table counts the same way.
    from simulations.tools.gkt_costs import edge_round_flops

    rows = [
        {"model": "edge", "flops_train": train, "flops_forward": forward},
        {"model": "big", "flops_train": 10 * train, "flops_forward": 10 * forward},
    ]
    edge, big = edge_round_flops(rows, 20, 7, epochs=2)
    assert (edge["train_flops"], edge["extract_flops"]) == (train * 40, forward * 27)
    assert big["extract_flops"] == 0 and big["round_ratio"] == pytest.approx(
        10 * train * 40 / (train * 40 + forward * 27)
    )


def test_edge_stem_checkpoint_loads_matching_stem_parameters_only(tmp_path):
    from clients.models import build_from_dims

    settings = _settings()
    torch.manual_seed(123)
    donor = build_from_dims(settings["model"])
    for p in donor.parameters():
        p.data.add_(1.0)  # unlike any random init
    # FedML's checkpoint layout: {"state_dict": ...} with DataParallel's "module." prefix.
    state = {f"module.{k}": v for k, v in donor.state_dict().items()}
    state["module.layer1.0.conv1.weight"] = torch.zeros(3, 3)  # wrong shape: skipped
    path = tmp_path / "best.pth"
    torch.save({"state_dict": state, "epoch": 7}, path)

    plain = FedGKTClient(settings)
    job0 = _edge_job(settings)
    plain.restore_edge(job0)
    loaded = FedGKTClient(_settings(edge_stem_checkpoint=str(path)))
    job1 = _edge_job(settings)
    loaded.restore_edge(job1)
    random_init, got, want = (dict(m.named_parameters()) for m in (job0.model, job1.model, donor))
    for name, value in got.items():
        stem = name.split(".")[0] in ("conv1", "bn1", "layer1") and name != "layer1.0.conv1.weight"
        expected = want[name] if stem else random_init[name]
        torch.testing.assert_close(value, expected, msg=name)
    assert any(n.startswith("layer1") for n in got) and "fc.weight" in got
    # Buffers (BatchNorm statistics) are not copied, as in FedML.
    torch.testing.assert_close(job1.model.bn1.running_var, job0.model.bn1.running_var)
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor matches"):
        FedGKTClient(_settings(edge_stem_checkpoint=str(tmp_path / "other.pth"))).restore_edge(
            _edge_job(settings)
        )


def test_edge_stem_checkpoint_must_exist():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from simulations.app.config import validate_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_container(
            compose(
                "config",
                overrides=[
                    "method=fedgkt",
                    "model=resnet8_56",
                    "method.edge_stem_checkpoint=/nonexistent/best.pth",
                ],
            )
        )
    with pytest.raises(ConfigError, match=r"^method.edge_stem_checkpoint='/nonexistent/best.pth': no such"):
        validate_config(cfg)
