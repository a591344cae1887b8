"""The ``logistic`` prober: ranking, directions, tie-breaks, solvers, state, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from sklearn.linear_model import LogisticRegression

from tae_framework.errors import ConfigError, DataError, NotFittedError
from tae_framework.probers.logistic import LogisticProber, fit_probes_sklearn, fit_probes_torch
from tae_framework.types import EditTargets, ProbeInputs

L, U, D = 3, 4, 6
PLANTED = {(2, 1): 2.5, (0, 3): 1.5}  # (layer, unit) -> strength of the label signal


def make_inputs(
    planted=PLANTED,
    n_groups=40,
    per_group=4,
    layers=L,
    units=U,
    dim=D,
    seed=0,
    noise="normal",
    tokens_per_answer=3,
) -> ProbeInputs:
    """Texts in groups of ``per_group`` (alternating labels); groups split 60/20/20 into
    train / validation / held-out test (in neither mask). Planted units carry
    ``strength * (+1 | -1)`` in their first coordinate."""
    g = torch.Generator().manual_seed(seed)
    n = n_groups * per_group
    groups = torch.arange(n) // per_group
    labels = torch.arange(n) % 2
    sign = (2 * labels - 1).float()
    if noise == "normal":
        feats = torch.randn(n, layers, units, dim, generator=g)
    else:  # bounded noise: planted units are separable with a margin
        feats = torch.rand(n, layers, units, dim, generator=g) * 2 - 1
    for (layer, unit), strength in planted.items():
        feats[:, layer, unit, 0] += strength * sign
    train = groups < int(0.6 * n_groups)
    val = (groups >= int(0.6 * n_groups)) & (groups < int(0.8 * n_groups))
    # held-out texts are wild: if they leaked into anything, results would change
    feats[~(train | val)] = feats[~(train | val)] * 50.0 + 7.0
    val_feats = feats[val]
    tokens = val_feats.repeat_interleave(tokens_per_answer, 0)
    tokens = tokens + 0.3 * torch.randn(tokens.shape, generator=g)
    token_labels = labels[val].repeat_interleave(tokens_per_answer)
    return ProbeInputs(feats, labels, groups, train, val, tokens, token_labels, seed=42)


def _selected(prober) -> list[tuple[int, int]]:
    t = prober.targets_
    return list(zip(t.layers.tolist(), t.units.tolist()))


def _sk_probe(inputs: ProbeInputs, layer: int, unit: int, C: float = 1.0) -> LogisticRegression:
    x = inputs.features[inputs.train_mask][:, layer, unit].double().numpy()
    y = inputs.labels[inputs.train_mask].numpy()
    return LogisticRegression(random_state=inputs.seed, max_iter=1000, C=C).fit(x, y)


# -- ranking ----------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
@pytest.mark.parametrize("rank_on", ["tokens", "features"])
def test_planted_heads_ranked_on_top(solver, rank_on):
    inputs = make_inputs()
    prober = LogisticProber(top_k=2, rank_on=rank_on, solver=solver).fit(inputs)
    assert _selected(prober) == [(2, 1), (0, 3)]  # stronger signal first
    scores = prober.scores_
    others = [scores[l, u] for l in range(L) for u in range(U) if (l, u) not in PLANTED]
    assert scores[0, 3] > max(others) and scores[2, 1] >= scores[0, 3]
    assert prober.ranking_[:2].tolist() == [[2, 1], [0, 3]]
    assert prober.targets_.site == "heads" and prober.targets_.unit_dim == D
    assert torch.equal(prober.targets_.sigmas, torch.ones(2))
    assert torch.equal(prober.targets_.scores, prober.scores_)


def test_accuracies_equal_sklearn_score_per_head():
    inputs = make_inputs()
    prober = LogisticProber(top_k=1).fit(inputs)  # rank_on="tokens" by default
    val = inputs.val_mask
    for layer in range(L):
        for unit in range(U):
            clf = _sk_probe(inputs, layer, unit)
            feat_acc = clf.score(
                inputs.features[val][:, layer, unit].numpy(), inputs.labels[val].numpy()
            )
            tok_acc = clf.score(
                inputs.val_tokens[:, layer, unit].numpy(), inputs.val_token_labels.numpy()
            )
            assert prober.feature_accuracy_[layer, unit].item() == pytest.approx(feat_acc, abs=1e-7)
            assert prober.token_accuracy_[layer, unit].item() == pytest.approx(tok_acc, abs=1e-7)
    assert torch.equal(prober.scores_, prober.token_accuracy_)
    by_features = LogisticProber(top_k=1, rank_on="features").fit(inputs)
    assert torch.equal(by_features.scores_, by_features.feature_accuracy_)
    assert torch.equal(by_features.token_accuracy_, prober.token_accuracy_)  # stored when given


def test_features_ranking_without_tokens_stores_no_token_accuracy():
    inputs = make_inputs()
    inputs.val_tokens = inputs.val_token_labels = None
    prober = LogisticProber(top_k=2, rank_on="features").fit(inputs)
    assert prober.token_accuracy_ is None
    assert _selected(prober) == [(2, 1), (0, 3)]


def test_needs_token_validation_follows_rank_on():
    assert LogisticProber().needs_token_validation is True
    assert LogisticProber(rank_on="features").needs_token_validation is False


# -- tie-break ------------------------------------------------------------------------


def _tied_inputs():
    # three units separable with a margin: all reach accuracy 1.0; (1, 3) by far the most
    return make_inputs(planted={(0, 0): 3.0, (0, 2): 3.0, (1, 3): 8.0}, layers=2, noise="uniform")


def test_tie_break_by_separation_picks_the_best_separated_head():
    inputs = _tied_inputs()
    prober = LogisticProber(top_k=3, rank_on="features").fit(inputs)
    acc = prober.feature_accuracy_
    assert acc[0, 0] == acc[0, 2] == acc[1, 3] == 1.0  # precondition: a three-way tie
    assert _selected(prober)[0] == (1, 3)
    assert prober.separation_[1, 3] > max(prober.separation_[0, 0], prober.separation_[0, 2])
    plain = LogisticProber(top_k=3, rank_on="features", tie_break="none").fit(inputs)
    assert _selected(plain) == [(0, 0), (0, 2), (1, 3)]  # ties by (layer, unit)


def test_separation_is_d_prime_of_decision_values():
    inputs = _tied_inputs()
    prober = LogisticProber(top_k=1, rank_on="features").fit(inputs)
    val = inputs.val_mask
    for layer, unit in [(0, 0), (1, 3), (1, 1)]:
        z = _sk_probe(inputs, layer, unit).decision_function(
            inputs.features[val][:, layer, unit].numpy()
        )
        y = inputs.labels[val].numpy()
        z1, z0 = z[y == 1], z[y == 0]
        pooled = np.sqrt((len(z1) * z1.var() + len(z0) * z0.var()) / len(z))
        expected = abs(z1.mean() - z0.mean()) / pooled
        # sklearn stops at tol=1e-4, our probes are the same fits: equal to a few digits
        assert prober.separation_[layer, unit].item() == pytest.approx(expected, rel=1e-3)


# -- directions -----------------------------------------------------------------------


def test_center_of_mass_is_the_normalised_mean_difference_over_train_and_val():
    inputs = make_inputs()
    prober = LogisticProber(top_k=2).fit(inputs)
    feats = inputs.features.double().numpy()
    labels = inputs.labels.numpy()
    rows = (inputs.train_mask | inputs.val_mask).numpy()
    for k, (layer, unit) in enumerate(_selected(prober)):
        pos = feats[rows & (labels == 1), layer, unit].mean(axis=0)
        neg = feats[rows & (labels == 0), layer, unit].mean(axis=0)
        expected = (pos - neg) / np.linalg.norm(pos - neg)
        np.testing.assert_allclose(prober.targets_.directions[k].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_probe_direction_is_parallel_to_sklearn_coef(solver):
    inputs = make_inputs()
    prober = LogisticProber(top_k=2, direction="probe", solver=solver).fit(inputs)
    for k, (layer, unit) in enumerate(_selected(prober)):
        clf = _sk_probe(inputs, layer, unit)
        coef = clf.coef_[0] / np.linalg.norm(clf.coef_[0])
        got = prober.targets_.directions[k].double().numpy()
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
        # sklearn's own fit is ours up to float32 storage; the torch solver reaches the exact
        # optimum, from which sklearn's lbfgs (tol=1e-4) stops a little short
        exact = solver == "sklearn"
        assert got @ coef > 1 - (1e-6 if exact else 1e-4)
        atol = 1e-5 if exact else 5e-3
        np.testing.assert_allclose(prober.probe_coef_[k].numpy(), clf.coef_[0], atol=atol)
        assert prober.probe_intercept_[k].item() == pytest.approx(clf.intercept_[0], abs=atol)


# -- solvers ----------------------------------------------------------------------------


def _objective(x, y, coef, intercept, C=1.0):
    z = np.einsum("hnd,hd->hn", x, coef) + intercept[:, None]
    return C * (np.logaddexp(0, z) - y * z).sum(1) + 0.5 * (coef * coef).sum(1)


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_torch_solver_reaches_the_sklearn_optimum(C):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 80, 5))
    y = (rng.random(80) < 0.4).astype(np.int64)
    x[:4, :, 0] += 1.5 * (2 * y - 1)
    x[4] *= 30.0  # badly scaled design
    c_sk, b_sk, _ = fit_probes_sklearn(x, y, seed=0, C=C, n_jobs=1)
    c_t, b_t, it = fit_probes_torch(
        torch.from_numpy(x), torch.from_numpy(y), C=C, units_per_batch=3
    )
    f_sk, f_t = _objective(x, y, c_sk, b_sk, C), _objective(x, y, c_t.numpy(), b_t.numpy(), C)
    assert np.all(f_t <= f_sk + 1e-9)  # never worse than sklearn (which stops at tol=1e-4)
    np.testing.assert_allclose(f_t, f_sk, rtol=1e-5)
    np.testing.assert_allclose(c_t.numpy(), c_sk, atol=5e-3)
    assert int(it.max()) < 30


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_parallel_sklearn_equals_serial(backend):
    # 64 units: enough to use joblib
    inputs = make_inputs(layers=8, units=8, dim=3, n_groups=15, planted={(5, 6): 3.0})
    serial = LogisticProber(top_k=3, rank_on="features", n_jobs=1).fit(inputs)
    parallel = LogisticProber(top_k=3, rank_on="features", n_jobs=2, parallel_backend=backend).fit(
        inputs
    )
    for a, b in zip(serial.get_state()[0].values(), parallel.get_state()[0].values()):
        assert torch.equal(a, b)
    assert _selected(serial)[0] == (5, 6)


def test_non_convergence_is_reported():
    with pytest.warns(UserWarning, match=r"did not converge within max_iter=1"):
        LogisticProber(top_k=1, max_iter=1, rank_on="features").fit(make_inputs())


# -- determinism, calibrate, state ------------------------------------------------------


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_fit_is_deterministic(solver):
    inputs = make_inputs()
    a = LogisticProber(top_k=3, solver=solver).fit(inputs).get_state()
    b = LogisticProber(top_k=3, solver=solver).fit(inputs).get_state()
    assert a[1] == b[1] and a[0].keys() == b[0].keys()
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_seed_override_is_passed_to_sklearn(monkeypatch):
    import sklearn.linear_model

    seen = []
    original = sklearn.linear_model.LogisticRegression

    class Spy(original):
        def __init__(self, **kwargs):
            seen.append(kwargs["random_state"])
            super().__init__(**kwargs)

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", Spy)
    LogisticProber(top_k=1, n_jobs=1).fit(make_inputs())
    LogisticProber(top_k=1, n_jobs=1, seed=7).fit(make_inputs())
    assert set(seen[: L * U]) == {42} and set(seen[L * U :]) == {7}


def test_calibrate_sets_population_std_of_projections():
    inputs = make_inputs()
    prober = LogisticProber(top_k=2).fit(inputs)
    tuning = torch.randn(50, 2, D, generator=torch.Generator().manual_seed(3)) * 2 + 1
    directions = prober.targets_.directions.numpy().copy()
    prober.calibrate(tuning)
    proj = np.einsum("nkd,kd->nk", tuning.double().numpy(), directions)
    np.testing.assert_allclose(prober.targets_.sigmas.numpy(), proj.std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(prober.targets_.directions.numpy(), directions)


def test_not_fitted_errors():
    prober = LogisticProber()
    with pytest.raises(NotFittedError, match="targets_"):
        _ = prober.targets_
    with pytest.raises(NotFittedError):
        prober.calibrate(torch.zeros(3, 16, 128))


@pytest.mark.parametrize("rank_on", ["tokens", "features"])
def test_state_round_trip_through_safetensors_and_json(rank_on):
    inputs = make_inputs()
    if rank_on == "features":
        inputs.val_tokens = inputs.val_token_labels = None
    prober = LogisticProber(top_k=2, rank_on=rank_on).fit(inputs)
    prober.calibrate(torch.randn(20, 2, D))
    tensors, meta = prober.get_state()
    tensors2, meta2 = st_load(st_save(tensors)), json.loads(json.dumps(meta))  # no pickle
    restored = LogisticProber(prober.config).set_state(tensors2, meta2)
    a, b = prober.targets_, restored.targets_
    assert isinstance(b, EditTargets) and b.site == a.site and b.unit_dim == a.unit_dim
    for field in ("layers", "units", "directions", "sigmas", "scores"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(restored.probe_coef_, prober.probe_coef_)
    assert (restored.token_accuracy_ is None) == (rank_on == "features")


# -- bad inputs ------------------------------------------------------------------------


def test_top_k_larger_than_heads():
    with pytest.raises(ConfigError, match=r"top_k=13 exceeds the 12 \(layer, unit\) pairs"):
        LogisticProber(top_k=13).fit(make_inputs())


def test_single_class_training_labels():
    inputs = make_inputs()
    inputs.labels = inputs.labels.clone()
    inputs.labels[inputs.train_mask] = 1
    with pytest.raises(DataError, match="all have label 1.*need both labels"):
        LogisticProber(top_k=2).fit(inputs)


def test_nan_features():
    inputs = make_inputs()
    inputs.features[3, 1, 2, 0] = float("nan")
    with pytest.raises(DataError, match="features contain 1 NaN"):
        LogisticProber(top_k=2).fit(inputs)


def test_nan_val_tokens():
    inputs = make_inputs()
    inputs.val_tokens[0, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="val_tokens contain 1 NaN/inf"):
        LogisticProber(top_k=2).fit(inputs)


@pytest.mark.parametrize("which", ["train_mask", "val_mask"])
def test_empty_train_or_validation(which):
    inputs = make_inputs()
    setattr(inputs, which, torch.zeros_like(inputs.train_mask))
    with pytest.raises(
        DataError,
        match="train set is empty" if which == "train_mask" else "validation set is empty",
    ):
        LogisticProber(top_k=2).fit(inputs)


def test_missing_val_tokens_names_the_option():
    inputs = make_inputs()
    inputs.val_tokens = None
    with pytest.raises(DataError, match="rank_on='tokens'.*val_tokens is None.*rank_on='features'"):
        LogisticProber(top_k=2).fit(inputs)


def test_val_tokens_with_wrong_shape():
    inputs = make_inputs()
    inputs.val_tokens = inputs.val_tokens[:, :, :2]
    with pytest.raises(DataError, match=r"val_tokens must be \[M, 3, 4, 6\]"):
        LogisticProber(top_k=2).fit(inputs)


def test_bad_labels_masks_and_shapes():
    inputs = make_inputs()
    inputs.labels = inputs.labels * 2
    with pytest.raises(DataError, match="must be 0 .* or 1"):
        LogisticProber(top_k=2).fit(inputs)
    inputs = make_inputs()
    inputs.val_mask = inputs.val_mask | inputs.train_mask
    with pytest.raises(DataError, match="overlap"):
        LogisticProber(top_k=2).fit(inputs)
    inputs = make_inputs()
    inputs.train_mask = inputs.train_mask.long()
    with pytest.raises(DataError, match="boolean"):
        LogisticProber(top_k=2).fit(inputs)
    inputs = make_inputs()
    inputs.features = inputs.features.flatten(2)
    with pytest.raises(DataError, match=r"\[N, L, U, d\]"):
        LogisticProber(top_k=2).fit(inputs)


@pytest.mark.parametrize("direction", ["center_of_mass", "probe"])
def test_zero_direction_names_the_head(direction):
    inputs = make_inputs()
    inputs.features[:, 1, 2] = 0.0  # a dead unit: no mean difference, zero probe weights
    with pytest.raises(DataError, match="layer 1, unit 2 is zero"):
        LogisticProber(top_k=L * U, direction=direction).fit(inputs)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"top_k": 0}, "top_k"),
        ({"rank_on": "answers"}, "rank_on"),
        ({"solver": "cuml"}, "solver"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"C": 0.0}, "C"),
        ({"topk": 3}, "unknown key 'topk'"),
        ({"tie_break": "random"}, "tie_break"),
        ({"direction": "mean"}, "direction"),
    ],
)
def test_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        LogisticProber(**options)


def test_single_class_validation_warns_about_tie_break():
    inputs = make_inputs()
    inputs.val_mask = inputs.val_mask & (inputs.labels == 1)
    inputs.val_tokens = inputs.val_token_labels = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LogisticProber(top_k=1, rank_on="features").fit(inputs)
    assert any("cannot break accuracy ties" in str(w.message) for w in caught)
