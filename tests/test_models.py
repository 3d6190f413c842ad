"""Forward and backward of the networks on small inputs."""

import pytest
import torch
from torch import nn

from avhgr.data import Batch, Rows
from avhgr.losses import correlation_loss
from avhgr.models import FEATURE_DIM, AVHGRModel, FusionNet, ModalityNet, PretrainedWeightsError, build_backbone

NUM_CLASSES = 6


def make_batch(visual=None, audio=None, labels=None, visual_present=None, audio_present=None, labeled=None) -> Batch:
    n = (visual if visual is not None else audio).shape[0]
    every = torch.ones(n, dtype=torch.bool)
    rows = Rows.of(every if visual_present is None else visual_present, every if audio_present is None else audio_present, labeled)
    return Batch(visual=visual, audio=audio, labels=labels if labels is not None else torch.zeros(n, dtype=torch.long),
                 video=torch.zeros(n, dtype=torch.long), rows=rows)  # fmt: skip


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    n = 4
    return torch.randn(n, 3, 32, 32), torch.randn(n, 1, 32, 32), torch.tensor([0, 3, 5, 1])


@pytest.mark.parametrize("layers", [1, 2, 4])
@pytest.mark.parametrize("scenario", ["both", "audio_missing", "visual_missing", "per_row"])
def test_joint_forward_backward(batch, layers, scenario):
    visual, audio, labels = batch
    torch.manual_seed(1)
    model = AVHGRModel(NUM_CLASSES, backbone="resnet18", fusion_layers=layers)
    hidden_linears = [m for m in model.fusion.hidden if isinstance(m, torch.nn.Linear)]
    assert len(hidden_linears) == layers
    kwargs = dict(visual=visual, audio=audio, labels=labels)
    model.train()  # h, the label feature, exists in training only
    if scenario == "audio_missing":
        kwargs["audio"] = None
    elif scenario == "visual_missing":
        kwargs["visual"] = None
    elif scenario == "per_row":
        kwargs["visual_present"] = torch.tensor([True, False, True, True])
        kwargs["audio_present"] = torch.tensor([True, True, False, False])
    out = model(make_batch(**kwargs))
    n = labels.shape[0]
    assert out.logits.shape == (n, NUM_CLASSES)
    assert out.f.shape == out.g.shape == out.h.shape == (n, FEATURE_DIM)
    if scenario == "audio_missing":
        assert (out.g == 0).all() and (out.f != 0).any()
    if scenario == "visual_missing":
        assert (out.f == 0).all() and (out.g != 0).any()
    if scenario == "per_row":
        assert (out.f[1] == 0).all() and (out.f[0] != 0).any()
        assert (out.g[2:] == 0).all() and (out.g[:2] != 0).any()
    loss = torch.nn.functional.cross_entropy(out.logits, labels) + correlation_loss(out.f, out.g, out.h)
    loss.backward()
    assert model.eval()(make_batch(**kwargs)).h is None  # at test time the label is unknown
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.fusion.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    if scenario == "audio_missing":
        assert all(p.grad is None for p in model.audio.parameters())
    else:
        assert model.audio.backbone.fc.weight.grad is not None


def test_missing_rows_do_not_touch_batchnorm_statistics():
    torch.manual_seed(0)
    model = AVHGRModel(NUM_CLASSES, backbone="resnet18")
    bn = model.visual.backbone.bn1
    visual = torch.randn(3, 3, 32, 32)
    present = torch.tensor([True, True, False])
    model(make_batch(visual=visual, audio=torch.randn(3, 1, 32, 32), visual_present=present))
    after_masked = bn.running_mean.clone()
    bn.reset_running_stats()
    visual_garbage = visual.clone()
    visual_garbage[2] = 1e6  # an absent row's content must not matter
    model(make_batch(visual=visual_garbage, audio=torch.randn(3, 1, 32, 32), visual_present=present))
    assert torch.allclose(bn.running_mean, after_masked)


def test_a_slice_without_a_modality_still_runs_syncbatchnorm_networks(monkeypatch):
    """Under DDP on GPUs BatchNorm becomes SyncBatchNorm, a collective in forward and backward:
    a process whose rows all lack a modality must still run that network on zero rows and keep
    it in the graph, or its peers hang. With plain BatchNorm it must not (an empty batch would
    make the running statistics NaN)."""
    torch.manual_seed(0)
    model = AVHGRModel(NUM_CLASSES, backbone="resnet18").train()
    absent = torch.zeros(3, dtype=torch.bool)
    out = model(make_batch(visual=torch.randn(3, 3, 32, 32), audio=torch.randn(3, 1, 32, 32), visual_present=absent))
    assert (out.f == 0).all() and not model.visual.backbone.bn1.running_mean.isnan().any()
    assert model.visual.backbone.bn1.num_batches_tracked.item() == 0  # the visual network did not run

    # SyncBatchNorm runs only on GPUs: stand in for its network with one weight, to see the call.
    model.visual = nn.SyncBatchNorm.convert_sync_batchnorm(model.visual)
    weight = nn.Parameter(torch.ones(()))
    rows_seen = []

    def features(x):
        rows_seen.append(x.shape[0])
        return x.flatten(1)[:, :1].expand(-1, FEATURE_DIM) * weight

    monkeypatch.setattr(model.visual, "features", features)
    out = model(make_batch(visual=torch.randn(3, 3, 32, 32), audio=torch.randn(3, 1, 32, 32), visual_present=absent))
    assert rows_seen == [0] and (out.f == 0).all()
    (out.logits.sum() + out.f.sum()).backward()
    assert weight.grad is not None  # in the graph: its backward (and SyncBatchNorm's collective) runs
    model.eval()
    model(make_batch(visual=torch.randn(3, 3, 32, 32), audio=torch.randn(3, 1, 32, 32), visual_present=absent))
    assert rows_seen == [0]  # evaluation needs no collective


def test_each_network_takes_its_own_input_from_the_batch():
    """The model owns its input: given a batch with both modalities (faces 32 px, spectrograms
    40 x 40), the audio network sees only the spectrograms and the visual network only the faces."""
    faces, specs = torch.randn(2, 3, 32, 32), torch.randn(2, 1, 40, 40)
    batch = make_batch(visual=faces, audio=specs)
    for modality, expected, name in (("audio", specs, "g"), ("visual", faces, "f")):
        net = ModalityNet(NUM_CLASSES, modality, "resnet18").eval()
        seen = []
        net.backbone.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        out = net(batch)
        assert len(seen) == 1 and torch.equal(seen[0], expected.expand(-1, 3, -1, -1))
        assert out.logits.shape == (2, NUM_CLASSES) and getattr(out, name).shape == (2, FEATURE_DIM)
        assert torch.equal(out.logits, net.head(net.features(expected)))
    with pytest.raises(ValueError, match="visual network was given a batch without visual input"):
        ModalityNet(NUM_CLASSES, "visual", "resnet18")(make_batch(audio=specs))


def test_resnet50_feature_layer_is_512():
    net = build_backbone("resnet50")
    assert net.fc.in_features == 2048 and net.fc.out_features == FEATURE_DIM


def test_fusion_rejects_other_depths():
    with pytest.raises(ValueError, match="1, 2 or 4"):
        FusionNet(NUM_CLASSES, layers=3)


def test_pretrained_from_local_state_dict(tmp_path):
    source = build_backbone("resnet18")
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    loaded = build_backbone("resnet18", pretrained=path)
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)
    assert not torch.equal(source.conv1.weight, reference.conv1.weight)
    assert loaded.fc.out_features == FEATURE_DIM  # the ImageNet classifier was not kept


def test_pretrained_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="no such weights file"):
        build_backbone("resnet18", pretrained=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="cannot read weights"):
        build_backbone("resnet18", pretrained=junk)
    import torchvision

    wrong = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(PretrainedWeightsError, match="does not match resnet18"):
        build_backbone("resnet18", pretrained=wrong)


def test_imagenet_offline_fails_clearly(tmp_path, monkeypatch):
    # An empty torch hub cache and no network: the download must fail with our message.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch.hub

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with pytest.raises(PretrainedWeightsError, match="offline"):
        build_backbone("resnet18", pretrained="imagenet")


def test_product_model_multiplies_the_networks_answers_where_a_window_has_both_inputs():
    """Late fusion: a window with both inputs gets p ∝ p_audio · p_visual (audio weight 0.5), one with
    only speech the audio network's own answer, one with only a face the visual network's; the audio
    weight tilts the product only where both answer."""
    from avhgr.models import ProductModel

    torch.manual_seed(0)
    audio, visual = ModalityNet(NUM_CLASSES, "audio", "resnet18").eval(), ModalityNet(NUM_CLASSES, "visual", feature_dim=7).eval()
    specs, feats = torch.randn(3, 1, 40, 40), torch.randn(3, 7)
    batch = make_batch(visual=feats, audio=specs, visual_present=torch.tensor([True, False, True]),
                       audio_present=torch.tensor([True, True, False]))  # fmt: skip
    with torch.no_grad():
        pa, pv = (torch.softmax(net.head(net.features(x)), dim=1) for net, x in ((audio, specs), (visual, feats)))
        p = torch.softmax(ProductModel(audio, visual)(batch).logits, dim=1)
        assert torch.allclose(p[0], pa[0] * pv[0] / (pa[0] * pv[0]).sum(), atol=1e-5)
        assert torch.allclose(p[1], pa[1], atol=1e-5) and torch.allclose(p[2], pv[2], atol=1e-5)
        tilted = torch.softmax(ProductModel(audio, visual, audio_weight=1.0)(batch).logits, dim=1)
        assert torch.allclose(tilted[0], pa[0] ** 2 / (pa[0] ** 2).sum(), atol=1e-5)  # p_audio^2w · p_visual^2(1-w)
        assert torch.allclose(tilted[1], pa[1], atol=1e-5) and torch.allclose(tilted[2], pv[2], atol=1e-5)
        nothing = make_batch(visual=feats, audio=specs, visual_present=torch.tensor([False, True, False]),
                             audio_present=torch.tensor([False, True, False]))  # fmt: skip
        assert torch.equal(ProductModel(audio, visual)(nothing).logits[[0, 2]], torch.zeros(2, NUM_CLASSES))  # no input: no answer
    with pytest.raises(ValueError, match="an audio and a visual network"):
        ProductModel(visual, audio)
    with pytest.raises(ValueError, match="have 6 and 4 classes"):
        ProductModel(audio, ModalityNet(4, "visual", feature_dim=7))
    with pytest.raises(ValueError, match=r"audio_weight must be in \[0, 1\]"):
        ProductModel(audio, visual, audio_weight=-0.1)
