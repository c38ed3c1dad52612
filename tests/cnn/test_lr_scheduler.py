"""LR schedulers against torch.optim.lr_scheduler's sequences, state_dict round trips, errors."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

import dualnorm
from dualnorm.errors import InputError
from dualnorm.lr_scheduler import CosineAnnealingLR, MultiStepLR, StepLR
from dualnorm.optim import SGD, Adam, AdamW

EPOCHS = 40
# torch warns when its scheduler steps without an optimizer step: irrelevant to the lr sequence
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

CASES = [
    ("StepLR", {"step_size": 7, "gamma": 0.1}),
    ("StepLR", {"step_size": 3, "gamma": 0.5}),
    ("StepLR", {"step_size": 1, "gamma": 0.9}),
    ("MultiStepLR", {"milestones": [2, 5, 5, 30], "gamma": 0.1}),
    ("MultiStepLR", {"milestones": [10, 3], "gamma": 0.5}),
    ("CosineAnnealingLR", {"T_max": 10, "eta_min": 0.0}),
    ("CosineAnnealingLR", {"T_max": 7, "eta_min": 0.001}),
    ("CosineAnnealingLR", {"T_max": 1}),
]
OURS = {"StepLR": StepLR, "MultiStepLR": MultiStepLR, "CosineAnnealingLR": CosineAnnealingLR}


def _closed_form(kind, kw, base, epoch):
    if kind == "StepLR":
        return base * kw["gamma"] ** (epoch // kw["step_size"])
    if kind == "MultiStepLR":
        return base * kw["gamma"] ** sum(1 for m in kw["milestones"] if m <= epoch)
    eta = kw.get("eta_min", 0.0)
    return eta + (base - eta) * (1 + math.cos(math.pi * epoch / kw["T_max"])) / 2


def _model():
    return dualnorm.nn.Linear(3, 2)


def _lrs(sched, opt, epochs=EPOCHS):
    out = []
    for _ in range(epochs):
        out.append((sched.get_last_lr()[0], opt.lr))
        sched.step()
    return out


@pytest.mark.parametrize(("kind", "kw"), CASES)
def test_sequence_matches_the_formula(backend, kind, kw):
    opt = SGD(_model().parameters(), lr=0.1, momentum=0.9)
    sched = OURS[kind](opt, **kw)
    assert sched.last_epoch == 0
    for epoch, (last, current) in enumerate(_lrs(sched, opt)):
        assert last == current  # get_last_lr is what the optimizer uses
        assert last == pytest.approx(_closed_form(kind, kw, 0.1, epoch), rel=1e-9, abs=1e-15)
    assert sched.last_epoch == EPOCHS


@pytest.mark.torch
@pytest.mark.parametrize(("kind", "kw"), CASES)
@pytest.mark.parametrize("optimizer", ["SGD", "Adam", "AdamW"])
def test_sequence_matches_torch(kind, kw, optimizer):
    torch = pytest.importorskip("torch")
    tp = torch.nn.Parameter(torch.zeros(2))
    topt = getattr(torch.optim, optimizer)([tp], lr=0.05)
    tsched = getattr(torch.optim.lr_scheduler, kind)(topt, **kw)
    with dualnorm.use_backend("numpy"):
        model = _model()
    opt = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[optimizer](model.parameters(), lr=0.05)
    sched = OURS[kind](opt, **kw)
    for epoch in range(EPOCHS):
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12, abs=1e-18), epoch
        assert sched.last_epoch == tsched.last_epoch
        topt.step()
        tsched.step()
        sched.step()


@pytest.mark.torch
@pytest.mark.parametrize(("kind", "kw"), CASES)
def test_external_lr_change_chains_as_torch(kind, kw):
    """The updates multiply the *current* lr: a manual change mid-way carries on as in PyTorch."""
    torch = pytest.importorskip("torch")
    tp = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([tp], lr=0.2)
    tsched = getattr(torch.optim.lr_scheduler, kind)(topt, **kw)
    with dualnorm.use_backend("numpy"):
        opt = SGD(_model().parameters(), lr=0.2)
    sched = OURS[kind](opt, **kw)
    for epoch in range(25):
        if epoch == 4:
            topt.param_groups[0]["lr"] = 0.03
            opt.lr = 0.03
        tsched.step()
        sched.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-18), epoch


@pytest.mark.parametrize(("kind", "kw"), CASES)
def test_state_dict_round_trip_resumes_the_sequence(backend, kind, kw):
    opt = SGD(_model().parameters(), lr=0.1)
    sched = OURS[kind](opt, **kw)
    for _ in range(9):
        sched.step()
    state = pickle.loads(pickle.dumps(sched.state_dict()))  # it must survive a checkpoint file
    expected = _lrs(sched, opt, 15)

    opt2 = SGD(_model().parameters(), lr=0.1)
    other = {
        "StepLR": {"step_size": 2},
        "MultiStepLR": {"milestones": [1]},
        "CosineAnnealingLR": {"T_max": 3},
    }
    sched2 = OURS[kind](opt2, **other[kind])  # different arguments: the state restores them
    sched2.load_state_dict(state)
    assert opt2.lr == state["_last_lr"][0]
    assert _lrs(sched2, opt2, 15) == expected


@pytest.mark.torch
@pytest.mark.parametrize(("kind", "kw"), CASES)
def test_state_dict_keys_and_loading_torchs(kind, kw):
    torch = pytest.importorskip("torch")
    tp = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([tp], lr=0.1)
    tsched = getattr(torch.optim.lr_scheduler, kind)(topt, **kw)
    for _ in range(6):
        tsched.step()
    with dualnorm.use_backend("numpy"):
        opt = SGD(_model().parameters(), lr=0.1)
    sched = OURS[kind](opt, **kw)
    public = {k for k in tsched.state_dict() if k not in ("_is_initial", "_get_lr_called_within_step")}
    assert set(sched.state_dict()) == public
    sched.load_state_dict(tsched.state_dict())  # a PyTorch checkpoint's scheduler state
    for epoch in range(20):
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-18), epoch
        tsched.step()
        sched.step()


def test_lr_reaches_the_optimizer_update(backend):
    """The scheduled lr is the one SGD steps with (a parameter moves by lr * grad)."""
    layer = dualnorm.nn.Linear(1, 1, bias=False)
    opt = SGD(layer.parameters(), lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    moves = []
    for _ in range(3):
        before = float(layer.weight.numpy()[0, 0])
        layer.weight.grad = layer.backend.asarray(np.ones((1, 1), np.float32))
        opt.step()
        moves.append(before - float(layer.weight.numpy()[0, 0]))
        sched.step()
    assert moves == pytest.approx([1.0, 0.5, 0.25])


def test_optim_module_exposes_lr_scheduler():
    from dualnorm import optim

    assert optim.lr_scheduler.StepLR is StepLR


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda o: StepLR(o, step_size=0), "step_size must be an integer >= 1"),
        (lambda o: StepLR(o, step_size=2.5), "step_size must be an integer"),
        (lambda o: StepLR(o, step_size=2, gamma="x"), "gamma must be a number"),
        (lambda o: MultiStepLR(o, milestones=5), "milestones must be a list"),
        (lambda o: MultiStepLR(o, milestones=[1, -2]), "each milestone must be an integer >= 0"),
        (lambda o: CosineAnnealingLR(o, T_max=0), "T_max must be an integer >= 1"),
        (lambda o: CosineAnnealingLR(o, T_max=5, eta_min=float("nan")), "eta_min must be a finite"),
        (lambda o: StepLR(o, step_size=2, last_epoch=3), "has no initial_lr"),
        (lambda o: StepLR([1, 2], step_size=2), "takes a dualnorm optimizer"),
    ],
)
def test_bad_arguments(make, match):
    with dualnorm.use_backend("numpy"):
        opt = SGD(_model().parameters(), lr=0.1)
    lr_before = opt.lr
    with pytest.raises(InputError, match=match):
        make(opt)
    assert opt.lr == lr_before


def test_bad_state_dict_changes_nothing():
    with dualnorm.use_backend("numpy"):
        opt = SGD(_model().parameters(), lr=0.1)
    sched = StepLR(opt, step_size=2)
    sched.step()
    good = sched.state_dict()
    for bad, match in (
        ({k: v for k, v in good.items() if k != "last_epoch"}, "missing keys \\['last_epoch'\\]"),
        ({**good, "T_max": 3}, "unexpected keys \\['T_max'\\]"),
        ({**good, "base_lrs": [0.1, 0.2]}, "base_lrs must be a list of one"),
        ({**good, "step_size": 0}, "step_size must be an integer >= 1"),
        ("nope", "takes a dict"),
    ):
        with pytest.raises(InputError, match=match):
            sched.load_state_dict(bad)
        assert sched.state_dict() == good
        assert opt.lr == 0.1
