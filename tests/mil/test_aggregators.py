"""Contract tests for every registered MIL aggregator (new registrations are covered automatically)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch

from slidescope.errors import InvalidParameterError
from slidescope.mil.aggregators import Aggregator, AggregatorOutput, create_aggregator, list_aggregators

NAMES = list_aggregators()
D = 32


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(name: str, in_dim: int = D, num_classes: int = 2, **kwargs: object) -> Aggregator:
    torch.manual_seed(0)
    return create_aggregator(name, in_dim=in_dim, num_classes=num_classes, **kwargs)


def _tiny_kwargs(name: str) -> dict[str, object]:
    """Small widths for the learning test, for whichever of them the model accepts."""
    accepted = inspect.signature(type(_build(name)).__init__).parameters
    wanted = {"embed_dim": 32, "attn_dim": 16, "k_sample": 4, "heads": 4, "num_groups": 4}
    return {k: v for k, v in wanted.items() if k in accepted}


def _padded_batch(sizes: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Bags of the given sizes, padded with large random garbage; returns (features, mask, bags)."""
    g = torch.Generator().manual_seed(seed)
    n = max(sizes)
    features = 10.0 * torch.randn(len(sizes), n, D, generator=g)  # garbage everywhere, then real tiles
    features[-1, -1, 0] = float("nan")  # padding may hold anything
    features[-1, -1, 1] = float("inf")
    mask = torch.zeros(len(sizes), n, dtype=torch.bool)
    bags = []
    for b, size in enumerate(sizes):
        bag = torch.randn(size, D, generator=g)
        features[b, :size] = bag
        mask[b, :size] = True
        bags.append(bag)
    return features, mask, bags


def test_registry_lists_the_published_models() -> None:
    expected = {
        "mean",
        "max",
        "abmil",
        "clam-sb",
        "clam-mb",
        "transmil",
        "dsmil",
        "dtfd",
        "acmil",
        "pl-maxpool",
    }
    assert expected <= set(NAMES)


def test_ins_is_retired_with_a_pointer_to_its_new_name() -> None:
    """'ins' was a partial-label max-pooling classifier, not INS: the old name says so instead of building it."""
    assert "ins" not in NAMES
    with pytest.raises(InvalidParameterError, match="renamed 'pl-maxpool'.*not INS"):
        create_aggregator("ins", in_dim=D, num_classes=2)


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(InvalidParameterError) as err:
        create_aggregator("abmill", in_dim=D, num_classes=2)
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_hyper_parameter_is_rejected() -> None:
    with pytest.raises(InvalidParameterError, match="embed_dim"):
        create_aggregator("abmil", in_dim=D, num_classes=2, embedding_dim=64)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_in_dim_is_a_clear_error(name: str) -> None:
    model = _build(name).eval()
    with pytest.raises(InvalidParameterError, match=f"in_dim={D}.*D={D + 1}"):
        model(torch.randn(1, 5, D + 1))
    with pytest.raises(InvalidParameterError, match=r"\(B, N, D\)"):
        model(torch.randn(5, D))
    with pytest.raises(InvalidParameterError, match="at least one real tile"):
        model(torch.randn(2, 5, D), torch.tensor([[True] * 5, [False] * 5]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("tiles", [1, 7, 50])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_shapes(name: str, batch: int, tiles: int, num_classes: int) -> None:
    model = _build(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, tiles, D))
    assert isinstance(out, AggregatorOutput)
    assert out.logits.shape == (batch, num_classes)
    assert out.scores.shape == (batch, tiles)
    assert out.aux_loss is None  # eval mode never returns one
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.scores).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [2, 4])
def test_padding_invariance(name: str, num_classes: int) -> None:
    model = _build(name, num_classes=num_classes).eval()
    sizes = [1, 13, 40, 7]
    features, mask, bags = _padded_batch(sizes)
    with torch.no_grad():
        out = model(features, mask)
        for b, bag in enumerate(bags):
            alone = model(bag.unsqueeze(0))
            torch.testing.assert_close(out.logits[b], alone.logits[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out.scores[b, : sizes[b]], alone.scores[0], atol=1e-5, rtol=1e-4)
    assert (out.scores[~mask] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_a_distribution_or_probabilities(name: str) -> None:
    model = _build(name, num_classes=3).eval()
    features, mask, _ = _padded_batch([5, 30, 1], seed=1)
    with torch.no_grad():
        scores = model(features, mask).scores
    assert torch.isfinite(scores).all() and (scores >= 0).all()
    if model.scores_kind == "attention":
        torch.testing.assert_close(scores.sum(1), torch.ones(3), atol=1e-5, rtol=0)
    else:
        assert model.scores_kind == "instance"
        assert (scores <= 1).all()


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name: str) -> None:
    model = _build(name).eval()
    features, mask, _ = _padded_batch([20, 9], seed=2)
    with torch.no_grad():
        first, second = model(features, mask), model(features, mask)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.scores, second.scores)


@pytest.mark.parametrize("name", NAMES)
def test_training_aux_loss_and_gradients(name: str) -> None:
    model = _build(name).train()
    features, mask, _ = _padded_batch([12, 30, 3], seed=3)
    labels = torch.tensor([0, 1, 1])
    without_labels = model(features, mask)
    assert without_labels.aux_loss is None
    out = model(features, mask, labels=labels)
    if model.has_aux_loss:
        assert out.aux_loss is not None and out.aux_loss.shape == () and torch.isfinite(out.aux_loss)
    else:
        assert out.aux_loss is None
    loss = out.logits.sum() + (out.aux_loss if out.aux_loss is not None else 0.0)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{pname} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    assert 0.0 < model.task_loss_weight <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_single_tile_bags_train(name: str) -> None:
    model = _build(name).train()
    out = model(torch.randn(2, 1, D), labels=torch.tensor([1, 0]))
    assert torch.isfinite(out.logits).all()
    assert out.aux_loss is None or torch.isfinite(out.aux_loss)


def _toy_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """60 bags of 20-40 tiles in R^16; positive bags hold 3 tiles from a shifted Gaussian.

    Returns features (B, N, 16), mask (B, N), labels (B,) and planted (B, N), True on the shifted tiles.
    """
    g = torch.Generator().manual_seed(seed)
    dim, n_bags, n_max = 16, 60, 40
    shift = torch.zeros(dim)
    shift[:4] = 2.0
    features = torch.randn(n_bags, n_max, dim, generator=g)
    mask = torch.zeros(n_bags, n_max, dtype=torch.bool)
    planted = torch.zeros(n_bags, n_max, dtype=torch.bool)
    labels = torch.arange(n_bags) % 2
    for b in range(n_bags):
        size = int(torch.randint(20, n_max + 1, (1,), generator=g))
        mask[b, :size] = True
        if labels[b] == 1:
            where = torch.randperm(size, generator=g)[:3]
            features[b, where] += shift
            planted[b, where] = True
    return features, mask, labels, planted


def _auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann-Whitney AUROC (ties count one half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


# models whose tile scores are not meant to single out tiles: mean pooling (uniform by definition) and
# TransMIL (its CLS-similarity score is only a proxy; it does not localise on this toy problem)
NO_LOCALISATION = {"mean", "transmil"}


@pytest.mark.parametrize("name", NAMES)
def test_learns_a_toy_problem(name: str) -> None:
    """A few hundred Adam steps reach train AUROC >= 0.9, and the scores point at the planted tiles."""
    features, mask, labels, planted = _toy_problem()
    torch.manual_seed(0)
    model = create_aggregator(name, in_dim=features.shape[-1], num_classes=2, **_tiny_kwargs(name))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(25):  # epochs of 6 mini-batches of 10 bags
        for idx in torch.randperm(len(labels), generator=g).split(10):
            out = model(features[idx], mask[idx], labels=labels[idx])
            # the model's own criterion, as the trainer uses it (DSMIL's is binary cross-entropy)
            loss = model.task_loss_weight * model.task_loss(out.logits, labels[idx])
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(features, mask)
    auroc = _auroc(out.logits.softmax(-1)[:, 1], labels)
    top = out.scores.argmax(1)
    hits = planted[torch.arange(len(labels)), top][labels == 1].float().mean()
    print(f"{name}: train AUROC {auroc:.3f}, top tile planted in {hits:.0%} of positive bags")
    assert auroc >= 0.9, f"{name} reached train AUROC {auroc:.3f}"
    if name not in NO_LOCALISATION:
        assert hits >= 0.8, (
            f"{name}: the top-scored tile is a planted one in only {hits:.0%} of positive bags"
        )


# ----------------------------------------------------------------------------------------------------
# model-specific behaviour


@pytest.mark.parametrize("name", ["clam-sb", "clam-mb"])
def test_clam_mixes_losses_through_task_loss_weight(name: str) -> None:
    """loss = bag_weight * CE + (1 - bag_weight) * L_inst, the second term already in aux_loss."""
    features, mask, _ = _padded_batch([30, 20], seed=4)
    aux = {}
    for bag_weight in (0.6, 0.2):
        model = _build(name, bag_weight=bag_weight).train()  # same seed: same weights
        assert model.task_loss_weight == pytest.approx(bag_weight)
        torch.manual_seed(1)  # same dropout
        out = model(features, mask, labels=torch.tensor([1, 0]))
        assert out.aux_loss is not None
        aux[bag_weight] = out.aux_loss.detach()
    assert aux[0.6] > 0
    torch.testing.assert_close(aux[0.6] / aux[0.2], torch.tensor(0.4 / 0.8))


def test_acmil_masks_the_expected_number_of_real_tiles_per_branch() -> None:
    model = _build("acmil", n_masked_patch=10, mask_drop=0.6).train()
    features, mask, _ = _padded_batch([30, 4], seed=5)
    branch_attention = model(features, mask).extra["branch_attention"]  # (B, M, N)
    dropped = ((branch_attention == 0) & mask[:, None]).sum(-1)
    assert (dropped[0] == 6).all()  # floor(10 * 0.6) of the 30 real tiles
    assert (dropped[1] == 2).all()  # floor(4 * 0.6): only real tiles are eligible
    assert (model.eval()(features, mask).extra["branch_attention"][mask[:, None].expand(-1, 5, -1)] > 0).all()


def test_dtfd_pseudo_bags_partition_the_real_tiles() -> None:
    model = _build("dtfd", num_groups=4)
    features, mask, _ = _padded_batch([10, 3], seed=6)
    for mode in (model.train(), model.eval()):
        groups = mode(features, mask).extra["groups"]
        assert (groups[~mask] == -1).all()
        assert sorted(groups[0, :10].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
        assert sorted(groups[1, :3].tolist()) == [0, 1, 2]


def test_nystrom_attention_matches_softmax_attention_on_short_sequences() -> None:
    from slidescope.mil.aggregators.transmil import NystromAttention

    torch.manual_seed(0)
    attention = NystromAttention(32, heads=4, dim_head=8, num_landmarks=16, dropout=0.0).eval()
    x = torch.randn(1, 12, 32)  # n <= num_landmarks: every token is its own landmark
    with torch.no_grad():
        q, k, v = attention.to_qkv(x).reshape(1, 12, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        exact = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, dim=-1) @ v
        assert attention.res_conv is not None
        exact = attention.to_out((exact + attention.res_conv(v)).transpose(1, 2).reshape(1, 12, 32))
        torch.testing.assert_close(attention(x), exact, atol=2e-2, rtol=0)


@pytest.mark.parametrize("n", [320, 301])
def test_nystrom_attention_in_chunks_equals_the_direct_formula(n: int) -> None:
    """The chunked evaluation (online softmax over columns, attn1 in row chunks) is the Nystrom formula."""
    from slidescope.mil.aggregators.transmil import NystromAttention, _iterative_pinv

    torch.manual_seed(1)
    attention = NystromAttention(32, heads=4, dim_head=8, num_landmarks=16, dropout=0.0).eval()
    x = torch.randn(1, n, 32)
    with torch.no_grad():
        attention.chunk_bytes = 1  # the smallest chunks (64 rows): several per sequence
        chunked = attention(x)
        attention.chunk_bytes = 1 << 40  # one chunk
        whole = attention(x)
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
        if n % 16 == 0:  # no alignment padding: the textbook formula with mean-pooled landmarks
            q, k, v = attention.to_qkv(x).reshape(1, n, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
            q = q * 8**-0.5
            q_land = q.reshape(1, 4, 16, n // 16, 8).mean(3)
            k_land = k.reshape(1, 4, 16, n // 16, 8).mean(3)
            attn1 = torch.softmax(q @ k_land.transpose(-1, -2), -1)
            attn2 = torch.softmax(q_land @ k_land.transpose(-1, -2), -1)
            attn3 = torch.softmax(q_land @ k.transpose(-1, -2), -1)
            out = (attn1 @ _iterative_pinv(attn2, 6)) @ (attn3 @ v) + attention.res_conv(v)
            direct = attention.to_out(out.transpose(1, 2).reshape(1, n, 32))
            torch.testing.assert_close(chunked, direct, atol=1e-4, rtol=1e-4)
