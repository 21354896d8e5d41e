"""Parameter, Module, Sequential: the module tree, modes, shared copies, state dicts and
weight files (npz, safetensors, pth), and the errors for wrong keys and shapes."""
import numpy as np
import pytest

from minilab import nn


def small_model(dtype=np.float64):
    return nn.deeplab("tiny-resnet-aspp", num_classes=3, dtype=dtype, dropout=0.0, seed=1)


def test_nn_names_follow_torchvision():
    keys = list(small_model().backbone.state_dict())
    for k in ["conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked", "layer1.0.conv1.weight",
              "layer1.0.bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
              "layer4.0.conv3.weight"]:
        assert k in keys
    vgg = nn.vgg16_largefov(width=0.125)
    convs = [k for k in vgg.state_dict() if k.endswith(".weight")]
    assert convs == [f"features.{i}.weight" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]


def test_nn_parameters_and_modes():
    model = small_model()
    params = model.parameters()
    assert len(params) == len({id(p) for p in params}) == len(list(model.named_parameters()))
    assert all(isinstance(p, nn.Parameter) for p in params)
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    for p in params:
        p.grad[...] = 1
    model.zero_grad()
    assert all(not p.grad.any() for p in params)


def test_nn_sequential_chains_forward_and_backward(rng):
    seq = nn.Sequential(nn.ReLU(), nn.Conv2d(2, 3, 1, rng=rng, dtype=np.float64), nn.ReLU())
    assert len(seq) == 3 and isinstance(seq[1], nn.Conv2d)
    x = rng.standard_normal((1, 2, 4, 4))
    y = seq.forward(x)
    expected = np.maximum(np.einsum("oc,nchw->nohw", seq[1].weight.data[:, :, 0, 0], np.maximum(x, 0)), 0)
    np.testing.assert_allclose(y, expected, atol=1e-12)
    assert seq.backward(np.ones_like(y)).shape == x.shape
    assert list(seq.state_dict()) == ["1.weight", "1.bias"]


def test_nn_shared_copy_shares_parameters_and_buffers(rng):
    model = small_model()
    twin = model.shared_copy()
    assert [id(p) for p in twin.parameters()] == [id(p) for p in model.parameters()]
    assert twin.backbone.bn1.running_mean is model.backbone.bn1.running_mean
    assert twin.backbone is not model.backbone and twin.head.branches[0] is not model.head.branches[0]
    x = rng.standard_normal((2, 3, 17, 17))
    model.zero_grad()
    d1 = rng.standard_normal(model.forward(x).shape)
    model.backward(d1)
    once = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.forward(x)
    twin.forward(x)
    model.backward(d1)
    twin.backward(d1)
    for g, p in zip(once, model.parameters()):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-10, atol=1e-14)


def test_nn_to_casts_parameters_and_buffers():
    model = small_model(np.float32).to(dtype=np.float64)
    state = model.state_dict()
    assert all(v.dtype == np.float64 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert state["backbone.bn1.num_batches_tracked"].dtype == np.int64
    assert all(p.grad.dtype == np.float64 for p in model.parameters())
    for dtype in (np.int32, np.float16, "complex", "abc"):  # int32 truncated the weights to 0
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            model.to(dtype=dtype)
    assert model.to(dtype="float32").state_dict()["backbone.conv1.weight"].dtype == np.float32


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
def test_nn_state_dict_round_trip(tmp_path, suffix, rng):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    if suffix == ".pth":
        pytest.importorskip("torch")
    model = small_model()
    x = rng.standard_normal((2, 3, 17, 17))
    model.forward(x)  # moves the running statistics away from their initial values
    path = tmp_path / f"weights{suffix}"
    nn.save_weights(model.state_dict(), path)
    other = nn.deeplab("tiny-resnet-aspp", num_classes=3, dtype=np.float64, seed=2)
    result = other.load_state_dict(nn.load_weights(path))
    assert result == ([], [])
    for (k, a), (k2, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b)
    model.eval(), other.eval()
    np.testing.assert_array_equal(model.forward(x), other.forward(x))


def test_nn_load_state_dict_errors_name_the_keys():
    model = small_model()
    state = dict(model.state_dict())
    extra = dict(state, **{"fc.weight": np.zeros((10, 256))})
    with pytest.raises(KeyError, match="unexpected keys \\['fc.weight'\\]"):
        model.load_state_dict(extra)
    assert model.load_state_dict(extra, strict=False).unexpected == ["fc.weight"]
    partial = {k: v for k, v in state.items() if k != "head.branches.0.fc8.bias"}
    with pytest.raises(KeyError, match="missing keys \\['head.branches.0.fc8.bias'\\]"):
        model.load_state_dict(partial)
    assert model.load_state_dict(partial, strict=False).missing == ["head.branches.0.fc8.bias"]
    bad = dict(state, **{"backbone.conv1.weight": np.zeros((8, 3, 3, 3))})
    with pytest.raises(ValueError, match="backbone.conv1.weight: expected \\(8, 3, 7, 7\\), got \\(8, 3, 3, 3\\)"):
        model.load_state_dict(bad, strict=False)
    nan = dict(state, **{"backbone.bn1.running_var": np.full(8, np.nan)})
    with pytest.raises(ValueError, match="'backbone.bn1.running_var'\\] has NaN or infinity"):
        model.load_state_dict(nan)
    overflow = dict(state, **{"backbone.bn1.running_mean": np.full(8, 1e39)})  # inf once in float32
    with pytest.raises(ValueError, match="'backbone.bn1.running_mean'\\] has NaN or infinity \\(as float32\\)"):
        small_model(np.float32).load_state_dict(overflow)
    with pytest.raises(TypeError, match="'backbone.bn1.running_mean'\\] must hold real numbers"):
        model.load_state_dict(dict(state, **{"backbone.bn1.running_mean": np.full(8, 1 + 1j)}))
    with pytest.raises(ValueError, match="'backbone.bn1.num_batches_tracked'\\] must hold integers"):
        model.load_state_dict(dict(state, **{"backbone.bn1.num_batches_tracked": np.array(3.7)}))
    model.load_state_dict(dict(state, **{"backbone.bn1.running_var": [2.0] * 8}))  # array-likes are accepted
    np.testing.assert_array_equal(model.state_dict()["backbone.bn1.running_var"], 2.0)
    negative = dict(state, **{"backbone.bn1.running_var": [1.0] * 7 + [-1.0]})
    with pytest.raises(ValueError, match="'backbone.bn1.running_var'\\] has negative variances"):
        model.load_state_dict(negative)


def test_nn_load_state_dict_names_a_torch_tensor():
    torch = pytest.importorskip("torch")
    conv = nn.Conv2d(2, 3, 3)
    state = {k: torch.tensor(v) for k, v in conv.state_dict().items()}
    with pytest.raises(TypeError, match=r"state_dict\['weight'\] must be a NumPy or CuPy array, got Tensor .*\.numpy\(\)"):
        conv.load_state_dict(state)
    conv.load_state_dict({k: v.numpy() for k, v in state.items()})


def test_nn_load_state_dict_writes_in_place_and_all_or_nothing():
    bn = nn.BatchNorm2d(2)
    live, snapshot = bn.state_dict(), {k: v.copy() for k, v in bn.state_dict().items()}
    bn.load_state_dict({k: np.full_like(v, 5) for k, v in snapshot.items()})
    assert all((v == 5).all() for v in live.values())  # parameters and buffers alike
    bn.load_state_dict(snapshot)  # a copied snapshot restores everything
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, snapshot[key])
    bad = {k: np.full_like(v, 7) for k, v in snapshot.items()}
    bad["running_var"] = np.array([1.0, -1.0])
    with pytest.raises(ValueError, match="negative variances"):
        bn.load_state_dict(bad)
    for key, value in bn.state_dict().items():  # the keys before it were not written either
        np.testing.assert_array_equal(value, snapshot[key])


def test_nn_load_torchvision_style_backbone_weights(tmp_path):
    """An ImageNet checkpoint has ``fc.*`` and no head: load it into the backbone, non-strict."""
    model = small_model(np.float32)
    source = nn.resnet((1, 1, 1, 1), width=8, output_stride=32, rng=5)
    state = dict(source.state_dict(), **{"fc.weight": np.ones((1000, 256), np.float32),
                                         "fc.bias": np.ones(1000, np.float32)})
    nn.save_weights(state, tmp_path / "imagenet.npz")
    result = model.backbone.load_state_dict(nn.load_weights(tmp_path / "imagenet.npz"), strict=False)
    assert result.missing == [] and result.unexpected == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(model.backbone.layer4[0].conv2.weight.data,
                                  source.layer4[0].conv2.weight.data)


def test_nn_npz_weights_keep_their_path_and_any_key(tmp_path):
    state = {"file": np.arange(3.0), "allow_pickle": np.ones((2, 2), np.float32), "a.b": np.int64(7)}
    for name in ("w.NPZ", "w.Npz", "w.npz"):
        nn.save_weights(state, tmp_path / name)
        loaded = nn.load_weights(tmp_path / name)
        assert list(loaded) == list(state)
        for key, value in state.items():
            assert loaded[key].dtype == value.dtype
            np.testing.assert_array_equal(loaded[key], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.NPZ", "w.Npz", "w.npz"]


def test_nn_weight_file_errors(tmp_path):
    with pytest.raises(ValueError, match="path must end in one of"):
        nn.save_weights({}, tmp_path / "w.bin")
    with pytest.raises(FileNotFoundError, match="no such weight file"):
        nn.load_weights(tmp_path / "missing.npz")
    for name, content in (("junk.npz", b"not a zip"), ("junk.safetensors", b"\xff" * 16)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name} is not a readable"):
            nn.load_weights(tmp_path / name)


def test_nn_pth_read_errors_name_the_file_and_bfloat16_loads(tmp_path):
    torch = pytest.importorskip("torch")
    (tmp_path / "junk.pth").write_bytes(b"junk" * 10)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    torch.save({"w": torch.ones(2, dtype=torch.bfloat16), "b": torch.arange(3)}, tmp_path / "bf16.pth")
    with pytest.raises(ValueError, match=r"path: junk.pth is not a readable .pth weight file \(KeyError"):
        nn.load_weights(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match=r"(?s)module.pth is not a weights-only .pth state_dict .*whole model"):
        nn.load_weights(tmp_path / "module.pth")
    (tmp_path / "garbage.pth").write_bytes(b"garbage bytes here")  # damage, not a model: torch's reason is kept
    with pytest.raises(ValueError, match=r"(?s)garbage.pth is not a weights-only .pth state_dict \(.*Unsupported operand"):
        nn.load_weights(tmp_path / "garbage.pth")
    state = nn.load_weights(tmp_path / "bf16.pth")
    assert state["w"].dtype == np.float32 and state["w"].tolist() == [1.0, 1.0] and state["b"].tolist() == [0, 1, 2]


def test_nn_backward_needs_a_forward(rng):
    """backward() before any forward() says so, rather than failing inside an op (or, for
    the multi-scale fusion, silently returning nothing)."""
    model = small_model()
    for module in (nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(3), nn.ImagePooling(3, 3),
                   model, nn.MultiScale(model)):
        with pytest.raises(RuntimeError, match=r"backward\(\) needs a forward\(\) first"):
            module.backward(np.zeros((1, 3, 5, 5)))


def test_nn_model_input_dtype_must_match():
    with pytest.raises(TypeError, match="x is float32 but the model's parameters are float64"):
        small_model().forward(np.zeros((1, 3, 17, 17), np.float32))


def test_nn_module_bookkeeping_promises():
    """One parameter under two names is listed once; private attributes are not searched for
    children; loading a state dict clears the gradients of the weights it replaces."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(np.ones(2))
            self.b = self.a
            self._scratch = nn.Conv2d(1, 1, 1)

    m = Twice()
    assert [name for name, _ in m.named_parameters()] == ["a"] and len(m.parameters()) == 1
    assert [name for name, _ in m.named_modules()] == [""]
    conv = nn.Conv2d(2, 3, 3)
    conv.weight.grad[...] = 5.0
    conv.load_state_dict({k: v.copy() for k, v in conv.state_dict().items()})
    assert not conv.weight.grad.any()
