"""SGD (Caffe's form), parameter groups and learning-rate policies against hand computation."""
import numpy as np
import pytest

from minilab import nn
from minilab.train import SGD, learning_rate, param_groups, poly_lr, step_lr


class P:
    """A stand-in parameter: the optimiser only reads .data and .grad."""

    def __init__(self, data, grad):
        self.data, self.grad = np.array(data, float), np.array(grad, float)


def test_sgd_matches_caffe_update_by_hand():
    w, b = P([1.0, -2.0], [0.5, 0.25]), P([3.0], [1.0])
    opt = SGD([{"params": [w], "lr_mult": 1.0}, {"params": [b], "lr_mult": 10.0, "decay_mult": 0.0}],
              momentum=0.9, weight_decay=0.1)
    opt.step(0.01)
    # v = 0.01 * (g + 0.1 w) ; w -= v
    v_w = 0.01 * (np.array([0.5, 0.25]) + 0.1 * np.array([1.0, -2.0]))
    assert np.allclose(w.data, [1.0, -2.0] - v_w, rtol=0, atol=1e-15)
    v_b = 0.1 * 1.0  # lr 0.01 × 10, no decay
    assert np.allclose(b.data, [3.0 - v_b], rtol=0, atol=1e-15)
    # second step at another learning rate: the momentum buffer keeps the old lr inside it
    w_before = w.data.copy()
    opt.step(0.005)
    v_w2 = 0.9 * v_w + 0.005 * (np.array([0.5, 0.25]) + 0.1 * w_before)
    assert np.allclose(w.data, w_before - v_w2, rtol=0, atol=1e-15)
    assert np.allclose(opt.state_dict()["velocity.0"], v_w2)


def test_sgd_state_round_trip_and_errors():
    a = P([1.0, 2.0], [1.0, 1.0])
    opt = SGD([a])
    opt.step(0.1)
    state = opt.state_dict()
    fresh = SGD([P([1.0, 2.0], [0.0, 0.0])])
    fresh.load_state_dict(state)
    assert np.array_equal(fresh.velocity[0], opt.velocity[0])
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict({"velocity.0": np.zeros(3)})
    with pytest.raises(ValueError, match="velocity.0"):
        fresh.load_state_dict({})
    with pytest.raises(ValueError, match="momentum"):
        SGD([a], momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        opt.step(float("nan"))
    with pytest.raises(ValueError, match="groups"):
        SGD([])


def test_sgd_settings_must_be_finite_and_not_negative():
    a = P([1.0], [1.0])
    for bad in (float("inf"), float("nan"), -1e-4):
        with pytest.raises(ValueError, match="weight_decay must be"):
            SGD([a], weight_decay=bad)
    for key in ("lr_mult", "decay_mult"):
        for bad in (float("nan"), float("inf"), -1.0):
            with pytest.raises(ValueError, match=rf"groups\[1\]\['{key}'\] must be"):
                SGD([{"params": [a]}, {"params": [P([1.0], [1.0])], key: bad}])
    with pytest.raises(TypeError, match=r"groups\[0\]\['lr_mult'\] must be a real number, got '10'"):
        SGD([{"params": [a], "lr_mult": "10"}])
    with pytest.raises(ValueError, match="momentum must be"):
        SGD([a], momentum=float("nan"))
    assert SGD([{"params": [a], "lr_mult": 0}]).groups[0]["lr_mult"] == 0.0  # a frozen classifier
    for bad, error in ((None, TypeError), ("0.1", TypeError), (float("nan"), ValueError), (-0.1, ValueError)):
        with pytest.raises(error, match="lr must be"):  # None and "0.1" failed inside float()
            SGD([a]).step(bad)
    np.testing.assert_array_equal(a.data, [1.0])  # no step was taken


def test_sgd_takes_each_parameter_once_from_any_iterable():
    p = nn.Parameter(np.ones(3, np.float32))
    for groups in ([p, p], [{"params": [p]}, {"params": [p], "lr_mult": 10}]):
        with pytest.raises(ValueError, match=r"groups\[\d\]\['params'\] holds a parameter already listed"):
            SGD(groups)
    with pytest.raises(ValueError, match=r"groups\[0\] must have a 'params' list"):
        SGD([{"lr_mult": 1}])
    with pytest.raises(TypeError, match=r"groups\[1\] must be a dict"):
        SGD([{"params": [p]}, P([1.0], [1.0])])
    p.grad[...] = 1
    SGD(iter([p]), momentum=0, weight_decay=0).step(1.0)  # a generator, read once
    assert np.array_equal(p.data, np.zeros(3))


def test_zero_grad():
    a = P([1.0], [5.0])
    SGD([a]).zero_grad()
    assert a.grad[0] == 0


def test_poly_and_step_by_hand():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-15)
    assert poly_lr(0.01, 100, 100) == 0.0
    assert poly_lr(0.01, 99, 100, power=0) == 0.01 and poly_lr(0.01, 100, 100, power=0) == 0.0  # not 0.0 ** 0
    assert step_lr(1e-3, 1999, 2000) == 1e-3
    assert step_lr(1e-3, 2000, 2000) == pytest.approx(1e-4, rel=1e-15)
    assert step_lr(1e-3, 4500, 2000) == pytest.approx(1e-5, rel=1e-15)
    assert learning_rate("poly", 0.1, 25, 100, power=1.0) == pytest.approx(0.075)
    assert learning_rate("step", 0.1, 10, 100, step_size=5, gamma=0.5) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="policy"):
        learning_rate("cosine", 0.1, 0, 10)
    with pytest.raises(ValueError, match="max_iter"):
        poly_lr(0.1, 0, 0)
    # a rate growing by gamma > 1 at every step overflowed a float (OverflowError) in the end
    with pytest.raises(ValueError, match="gamma must be <= 1"):
        step_lr(0.1, 10**4, 1, gamma=10.0)
    with pytest.raises(ValueError, match="gamma must be <= 1"):
        learning_rate("step", 0.1, 10**4, 100, step_size=1, gamma=10.0)
    assert step_lr(0.1, 10**4, 1, gamma=1) == 0.1


def test_param_groups_put_fc8_at_ten_times():
    model = nn.deeplab_vgg16(3, width=0.125, depth=(1,) * 5, rates=(1, 2), hidden=4, dropout=0.0)
    groups = param_groups(model, 10.0)
    names = dict(model.named_parameters())
    head = {id(p) for p in groups[1]["params"]}
    assert groups[1]["lr_mult"] == 10.0 and groups[0]["lr_mult"] == 1.0
    assert {n for n, p in names.items() if id(p) in head} == {
        f"head.branches.{i}.fc8.{k}" for i in range(2) for k in ("weight", "bias")}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(names)


def test_sgd_leaves_frozen_parameters_alone():
    """trainable = False (frozen batch norm): no gradient step, no weight decay, no momentum."""
    frozen, free = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(3))
    frozen.trainable = False
    frozen.grad[...] = free.grad[...] = 0.5
    opt = SGD([frozen, free], momentum=0.9, weight_decay=0.1)
    opt.step(1.0)
    opt.step(1.0)
    assert np.array_equal(frozen.data, np.ones(3)) and not opt.velocity[0].any()
    assert not np.allclose(free.data, 1.0)
    frozen.trainable = True  # unfrozen: trained from then on
    opt.step(1.0)
    assert np.allclose(frozen.data, 1.0 - (0.5 + 0.1))


@pytest.mark.parametrize("head", ["hidden=None", "ASPPv3"])
def test_param_groups_find_the_classifier_of_every_head(head):
    """The layer that outputs the class scores is the classifier: fc6 when a branch is that
    one convolution (DeepLab-v2's ResNet head), ASPPv3's 1×1 classifier."""
    if head == "ASPPv3":
        model = nn.deeplab("tiny-resnet-aspp", 5)
        model.head = nn.ASPPv3(model.backbone.out_channels, 5, rates=(1, 2), width=8)
        expected = {"head.classifier.weight", "head.classifier.bias"}
    else:
        model = nn.deeplab("tiny-resnet-aspp", 5, hidden=None)
        expected = {f"head.branches.{i}.fc6.{k}" for i in range(4) for k in ("weight", "bias")}
    backbone, classifier = param_groups(model, 10.0)
    assert (backbone["name"], classifier["name"], classifier["lr_mult"]) == ("backbone", "classifier", 10.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in classifier["params"]} == expected
    assert len(backbone["params"]) + len(expected) == len(names)


def test_param_groups_take_the_classifier_multiplier_and_skip_an_empty_group():
    model = nn.deeplab("tiny-resnet-aspp", 3)
    assert [g["lr_mult"] for g in param_groups(model, 0.0)] == [1.0, 0.0]  # a frozen classifier
    assert [g["lr_mult"] for g in param_groups(model, 2.5)] == [1.0, 2.5]
    backbone = nn.resnet((1, 1, 1, 1), width=2)  # no classifier anywhere: one group, which SGD takes
    groups = param_groups(backbone)
    assert [g["name"] for g in groups] == ["backbone"]
    SGD(groups)
