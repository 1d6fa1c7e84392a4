"""RD4AD reverse-distillation student (OCBE + decoder) and the cosine distillation loss."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ikd_core.backbones import FeatureExtractor, build_student
from ikd_core.loss import CosineDistillationLoss
from ikd_core.reverse import OneClassBottleneck, ReverseDecoder, ReverseStudent, cosine_distance


def _feats(channels: tuple[int, ...], sizes: tuple[int, ...], batch: int = 2, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=g) for c, s in zip(channels, sizes, strict=True)]


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster, and immune to oversubscribed shared CPUs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def lite0() -> FeatureExtractor:
    """efficientnet_lite0 feature extractor with random weights (stand-in teacher, no download)."""
    torch.manual_seed(0)
    return build_student("efficientnet_lite0").eval()


def test_shapes_efficientnet_lite0(lite0: FeatureExtractor) -> None:
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        t = lite0(x)
    student = ReverseStudent(lite0.channels, strides=lite0.strides)
    assert student.channels == lite0.channels == [24, 40, 112]
    s = student(t)
    assert [f.shape for f in s] == [f.shape for f in t]
    assert sum(p.numel() for p in student.parameters()) < 3_000_000


@pytest.mark.parametrize(
    ("channels", "strides", "sizes", "embed_stride"),
    [
        ((64, 128, 256), (4, 8, 16), (32, 16, 8), 2),  # resnet18 layers 1-3
        ((64, 128, 256), None, (17, 9, 5), 2),  # odd sizes (e.g. a 68 px image), default halving strides
        ((36, 72), (4, 4), (16, 16), 2),  # hrnet_w18 branches upsampled to one resolution
        ((24, 40, 112), (4, 8, 16), (16, 8, 4), 1),  # tiny deepest level: no stride in the embedding
    ],
)
def test_shapes_other_backbones(
    channels: tuple[int, ...], strides: tuple[int, ...] | None, sizes: tuple[int, ...], embed_stride: int
) -> None:
    t = _feats(channels, sizes)
    student = ReverseStudent(channels, width=64, strides=strides, embed_stride=embed_stride)
    s = student(t)
    assert [f.shape for f in s] == [f.shape for f in t]
    emb = student.bottleneck(t)
    deep = sizes[-1]
    assert emb.shape == (2, 64, -(-deep // embed_stride), -(-deep // embed_stride))


def test_parts_and_bad_arguments() -> None:
    bottleneck = OneClassBottleneck([8, 16], strides=[4, 8], width=32)
    decoder = ReverseDecoder([8, 16], width=32)
    t = _feats((8, 16), (8, 4))
    out = decoder(bottleneck(t), t)
    assert [f.shape for f in out] == [f.shape for f in t]
    with pytest.raises(ValueError, match="power-of-two"):
        ReverseStudent([8, 16], strides=[4, 12])
    with pytest.raises(ValueError, match="power-of-two"):
        ReverseStudent([8, 16], strides=[8, 4])
    with pytest.raises(ValueError, match="strides"):
        ReverseStudent([8, 16], strides=[4])
    with pytest.raises(ValueError, match="levels"):
        ReverseStudent([8, 16])(t[:1])


def test_gradients_reach_every_parameter() -> None:
    channels = (24, 40, 112)
    t = _feats(channels, (16, 8, 4))
    student = ReverseStudent(channels, width=64, strides=(4, 8, 16))
    loss = CosineDistillationLoss(3)(t, student(t))
    loss.backward()
    for name, p in student.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_training_decreases_cosine_loss() -> None:
    torch.manual_seed(0)
    channels = (24, 40, 112)
    t = _feats(channels, (16, 8, 4), batch=4)
    student = ReverseStudent(channels, width=64, strides=(4, 8, 16))
    criterion = CosineDistillationLoss(3)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = criterion(t, student(t))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_cosine_loss_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    t = [torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 16, 3, 3, generator=g)]
    s = [f + 0.5 * torch.randn(f.shape, generator=g) for f in t]
    weights = (1.0, 2.0)
    loss = CosineDistillationLoss(2, weights)(t, s)
    tn = [F.normalize(f.double(), dim=1) for f in t]
    sn = [F.normalize(f.double(), dim=1) for f in s]
    half_d = [0.5 * (a - b).square().sum(dim=1).mean() for a, b in zip(tn, sn, strict=True)]
    ref = (weights[0] * half_d[0] + weights[1] * half_d[1]) / sum(weights)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) < 1e-6
    # Scale-invariant: normalised inputs give the same loss; identical inputs give 0.
    assert abs(CosineDistillationLoss(2, weights)(tn, sn).item() - ref.item()) < 1e-6
    assert abs(CosineDistillationLoss(2)(t, t).item()) < 1e-6
    # The map helper agrees with the loss.
    assert torch.allclose(cosine_distance(t[0], s[0]).mean(), CosineDistillationLoss(1)(t[:1], s[:1]), atol=1e-6)
    # bfloat16 inputs still give a float32 loss.
    assert CosineDistillationLoss(2)([f.bfloat16() for f in t], s).dtype == torch.float32
    with pytest.raises(ValueError, match="level weights"):
        CosineDistillationLoss(2, [1.0])


def test_cosine_loss_all_reduce_matches_global_batch() -> None:
    """Two simulated ranks with unequal batch shares give the loss (and gradient) of the whole batch."""
    g = torch.Generator().manual_seed(2)
    t = [torch.randn(3, 8, 4, 4, generator=g), torch.randn(3, 16, 2, 2, generator=g)]
    s = [torch.randn(f.shape, generator=g, requires_grad=True) for f in t]
    criterion = CosineDistillationLoss(2, (1.0, 2.0))
    ref = criterion(t, s)
    (ref_grad,) = torch.autograd.grad(ref, s[0])

    barrier = threading.Barrier(2)
    slots: list[Tensor | None] = [None, None]
    results: dict[int, tuple[float, Tensor]] = {}

    def worker(rank: int, part: slice) -> None:
        def all_reduce(x: Tensor) -> Tensor:
            slots[rank] = x.detach()
            barrier.wait()
            other = slots[1 - rank]
            barrier.wait()
            assert other is not None
            return x + other  # autograd flows through the local share, as in DDP-style reductions

        ts = [f[part] for f in t]
        ss = [f[part] for f in s]
        loss = criterion(ts, ss, all_reduce=all_reduce)
        (grad,) = torch.autograd.grad(loss, s[0])
        results[rank] = (loss.item(), grad)

    threads = [threading.Thread(target=worker, args=(0, slice(0, 1))),
               threading.Thread(target=worker, args=(1, slice(1, 3)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert abs(results[0][0] - ref.item()) < 1e-6
    assert abs(results[1][0] - ref.item()) < 1e-6
    # Each rank's gradient is its share; their sum is the whole-batch gradient.
    assert torch.allclose(results[0][1] + results[1][1], ref_grad, atol=1e-7)


class _RDMaps(nn.Module):
    """Teacher + reverse student -> per-level cosine distance maps (what an RD4AD export computes)."""

    def __init__(self, teacher: FeatureExtractor, student: ReverseStudent) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        t = self.teacher(x)
        s = self.student(t)
        return tuple(cosine_distance(a, b) for a, b in zip(t, s, strict=True))


def test_onnx_export_matches_torch(lite0: FeatureExtractor) -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    student = ReverseStudent(lite0.channels, strides=lite0.strides)
    x = torch.randn(3, 3, 96, 96)
    # Non-trivial BatchNorm running statistics.
    student.train()
    with torch.no_grad():
        for _ in range(3):
            student(lite0(x))
    graph = _RDMaps(lite0, student.eval()).eval()
    names = [f"map{i}" for i in range(len(lite0.channels))]
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.zeros(2, 3, 96, 96),), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=names,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load_from_string(buf.getvalue()).graph.node}
    assert "ConvTranspose" not in ops
    with torch.no_grad():
        ref = graph(x)  # batch 3: the batch axis is dynamic
    got = sess.run(names, {"image": x.numpy()})
    for r, o in zip(ref, got, strict=True):
        assert o.shape == tuple(r.shape)
        assert np.abs(o - r.numpy()).max() < 1e-4
        assert r.abs().max() > 0
