"""Jigsaw puzzles: the greedy maximal-Hamming permutation set and its cache,
and the tiles: inside their cells with a random gap, permuted by the label,
channel-jittered or grayscale, standardised one by one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_runner.views import jigsaw_permutations
from ssl_runner.views.color import grayscale
from ssl_runner.views.jigsaw import CIFAR_GEOMETRY, PAPER_GEOMETRY, JigsawTiles, standardize_tiles
from ssl_runner.views.jigsaw_permutations import (all_permutations, cached_permutation_set, hamming_permutation_set,
                                                  permutation_set_file)


def _pairwise_hamming(permutations):
    """P x P Hamming distances."""
    return (permutations[:, None, :] != permutations[None, :, :]).sum(-1)


def _off_diagonal(distances):
    return distances[~torch.eye(len(distances), dtype=torch.bool)].float()


def _is_permutation_of_range(rows):
    return bool((rows.sort(dim=1).values == torch.arange(rows.shape[1])).all())


# ---- the permutation set ------------------------------------------------------------------------

def test_all_permutations_are_every_ordering_once_in_lexicographic_order():
    for tiles in (2, 4, 5):
        permutations = all_permutations(tiles)
        assert permutations.shape == (math.factorial(tiles), tiles)
        assert _is_permutation_of_range(permutations.long())
        rows = [tuple(r) for r in permutations.tolist()]
        assert rows == sorted(set(rows))


@pytest.mark.parametrize("size, tiles", [(10, 4), (24, 4), (30, 5)])
def test_the_set_has_the_requested_distinct_permutations_and_depends_only_on_the_seed(size, tiles):
    permutations = hamming_permutation_set(size, tiles, seed=0)
    assert permutations.shape == (size, tiles) and permutations.dtype == torch.long
    assert _is_permutation_of_range(permutations)
    assert len({tuple(r) for r in permutations.tolist()}) == size
    assert torch.equal(permutations, hamming_permutation_set(size, tiles, seed=0))
    assert not torch.equal(permutations, hamming_permutation_set(size, tiles, seed=1))


def _assert_each_choice_maximises_the_summed_distance(permutations, candidates):
    """Algorithm 1's invariant: every permutation after the first has the
    largest summed Hamming distance to those chosen before it, among the
    candidates (tiles! x tiles, uint8) not chosen yet."""
    tiles = permutations.shape[1]
    key = torch.tensor([tiles ** i for i in range(tiles)])
    position = {int(k): i for i, k in enumerate((candidates.long() * key).sum(1).tolist())}
    chosen = [position[int(k)] for k in (permutations * key).sum(1).tolist()]
    summed = torch.zeros(len(candidates), dtype=torch.int32)  # to the permutations chosen so far
    taken = -10 ** 6  # a chosen candidate's sum stays far below every available one's
    for step, permutation in enumerate(permutations.to(torch.uint8)):
        if step:
            assert summed[chosen[step]] >= 0, f"step {step} chose a permutation again"
            assert summed[chosen[step]] == summed.max(), step
        summed[chosen[step]] = taken
        summed += (candidates != permutation).sum(1, dtype=torch.int32)


def test_each_choice_has_the_largest_summed_distance_to_those_before_it_5_tiles():
    permutations = hamming_permutation_set(60, 5, seed=3)
    _assert_each_choice_maximises_the_summed_distance(permutations, all_permutations(5))


def test_nine_tile_set_of_100_is_greedy_and_has_the_papers_average_distance():
    permutations = hamming_permutation_set(100, 9, seed=0)
    assert permutations.shape == (100, 9) and _is_permutation_of_range(permutations)
    assert len({tuple(r) for r in permutations.tolist()}) == 100
    _assert_each_choice_maximises_the_summed_distance(permutations, all_permutations(9))
    distances = _off_diagonal(_pairwise_hamming(permutations))
    # Measured 8.08, the average the paper reports for its maximal set of 100 (Table 4); its
    # minimum there is 2, as here: maximising the average does not raise the minimum.
    assert distances.mean() >= 8.07
    assert distances.min() == 2
    # Random sets average 8.00 (one tile in place on average), spread 0.014: greedy is ~6 spreads above.
    generator = torch.Generator().manual_seed(0)
    random_averages = [_off_diagonal(_pairwise_hamming(torch.argsort(torch.rand(100, 9, generator=generator), 1)))
                       .mean() for _ in range(20)]
    assert max(random_averages) < distances.mean() - 0.03


def test_set_arguments_are_validated():
    with pytest.raises(ValueError, match="between 2 and 4! = 24"):
        hamming_permutation_set(25, 4)
    with pytest.raises(ValueError, match="between 2 and"):
        hamming_permutation_set(1, 9)
    with pytest.raises(ValueError, match="tiles"):
        hamming_permutation_set(10, 1)
    with pytest.raises(ValueError, match="tiles"):
        cached_permutation_set(10, 11)


# ---- the cache -------------------------------------------------------------------------------------

def _generation_forbidden(*args, **kwargs):
    raise AssertionError("the permutation set was regenerated instead of loaded")


def test_cached_set_is_written_once_then_loaded(tmp_path, monkeypatch):
    first = cached_permutation_set(12, 4, seed=2, cache_dir=tmp_path)
    path = permutation_set_file(12, 4, 2, tmp_path)
    assert path.parent == tmp_path and path.is_file()
    assert all(part in path.name for part in ("size12", "tiles4", "seed2"))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left behind
    assert torch.equal(first, hamming_permutation_set(12, 4, seed=2))
    monkeypatch.setattr(jigsaw_permutations, "hamming_permutation_set", _generation_forbidden)
    assert torch.equal(cached_permutation_set(12, 4, seed=2, cache_dir=tmp_path), first)
    with pytest.raises(AssertionError, match="regenerated"):  # another seed is another file
        cached_permutation_set(12, 4, seed=3, cache_dir=tmp_path)


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_unreadable_or_wrong_cache_file_is_regenerated(tmp_path, content):
    path = permutation_set_file(12, 4, 0, tmp_path)
    if content is None:  # readable, but not 12 permutations of 4 tiles
        torch.save(torch.zeros(3, 3, dtype=torch.long), path)
    else:
        path.write_bytes(content)
    permutations = cached_permutation_set(12, 4, cache_dir=tmp_path)
    assert torch.equal(permutations, hamming_permutation_set(12, 4))
    assert torch.equal(torch.load(path, weights_only=True), permutations)


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_RUNNER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cached_permutation_set(6, 3)
    assert permutation_set_file(6, 3).parent == tmp_path / "xdg" / "ssl_runner"
    assert permutation_set_file(6, 3).is_file()
    monkeypatch.setenv("SSL_RUNNER_CACHE", str(tmp_path / "runner"))
    assert permutation_set_file(6, 3).parent == tmp_path / "runner"


# ---- the tiles -------------------------------------------------------------------------------------

PERMUTATIONS = hamming_permutation_set(30, 9, seed=0)


def _coordinate_images(n, size):
    """Float images whose channel 0 is row / size, channel 1 column / size, channel 2 0.5."""
    rows = torch.arange(size, dtype=torch.float32).view(size, 1).expand(size, size) / size
    columns = rows.t()
    return torch.stack([rows, columns, torch.full((size, size), 0.5)]).expand(n, 3, size, size).clone()


def _pixel_coordinates(tiles, size):
    """(row, column) of the pixel each tile pixel came from, read from channels 0 and 1."""
    return (tiles[..., 0, :, :] * size).round().long(), (tiles[..., 1, :, :] * size).round().long()


@pytest.mark.parametrize("geometry", [CIFAR_GEOMETRY, PAPER_GEOMETRY])
def test_tiles_lie_inside_their_cells_with_a_random_gap_between_neighbours(geometry):
    size, tile = geometry["image_size"], geometry["tile_size"]
    puzzles = JigsawTiles(PERMUTATIONS, size, tile, grayscale_p=0.0, channel_jitter=0, normalize_tiles=False)
    cell = size // 3
    n = 200
    params = puzzles.sample(n, generator=torch.Generator().manual_seed(0))
    rows, columns = _pixel_coordinates(puzzles.grid_tiles(_coordinate_images(n, size), params), size)
    top, left = rows[..., 0, 0], columns[..., 0, 0]  # N x 9, cells row by row
    steps = torch.arange(tile)
    # Each tile is an unbroken tile x tile crop whose corner is the cell corner plus the sampled offset.
    assert torch.equal(rows, (top[..., None] + steps)[..., :, None].expand_as(rows))
    assert torch.equal(columns, (left[..., None] + steps)[..., None, :].expand_as(columns))
    cell_index = torch.arange(9)
    assert torch.equal(top - (cell_index // 3) * cell, params["offset"][..., 0])
    assert torch.equal(left - (cell_index % 3) * cell, params["offset"][..., 1])
    for offset in (top - (cell_index // 3) * cell, left - (cell_index % 3) * cell):
        assert offset.min() == 0 and offset.max() == cell - tile  # inside the cell, every position used
    # Gaps between horizontal and vertical neighbours: never negative (no shared pixel), 0 to
    # 2 (cell - tile) pixels, cell - tile on average (the paper: 0 to 22, 11 on average).
    horizontal = (left.view(n, 3, 3)[:, :, 1:] - left.view(n, 3, 3)[:, :, :-1] - tile).flatten()
    vertical = (top.view(n, 3, 3)[:, 1:, :] - top.view(n, 3, 3)[:, :-1, :] - tile).flatten()
    for gap in (horizontal, vertical):
        assert gap.min() == 0 and gap.max() == 2 * (cell - tile)
        assert abs(gap.float().mean() - (cell - tile)) < 0.1 * (cell - tile)


def test_the_label_inverts_the_permutation():
    puzzles = JigsawTiles(PERMUTATIONS, 64, 18, grayscale_p=0.3, channel_jitter=1, normalize_tiles=False)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    params = puzzles.sample(16, generator=torch.Generator().manual_seed(1))
    slots = puzzles.apply(images, params)
    in_grid_order = torch.empty_like(slots)
    for i, label in enumerate(params["permutation"]):
        in_grid_order[i, PERMUTATIONS[label]] = slots[i]
    grid = puzzles.grid_tiles(images, params)
    torch.testing.assert_close(in_grid_order, grid, rtol=0, atol=0)
    # The tiles were really moved.
    assert not torch.equal(slots, grid)


def test_call_returns_the_tiles_and_labels_of_its_sampled_parameters():
    for side, geometry in ((32, CIFAR_GEOMETRY), (96, PAPER_GEOMETRY)):
        puzzles = JigsawTiles.for_image_side(PERMUTATIONS, side)
        assert (puzzles.image_size, puzzles.tile_size) == (geometry["image_size"], geometry["tile_size"])
        images = torch.randint(0, 256, (4, 3, side, side), dtype=torch.uint8)
        tiles, labels = puzzles(images, torch.Generator().manual_seed(2))
        t = geometry["tile_size"]
        assert tiles.shape == (4, 9, 3, t, t) and tiles.dtype == torch.float32
        assert labels.shape == (4,) and labels.dtype == torch.long
        params = puzzles.sample(4, generator=torch.Generator().manual_seed(2))
        assert torch.equal(labels, params["permutation"])
        torch.testing.assert_close(tiles, puzzles.apply(images, params))
        # uint8 and the same images as [0, 1] floats give the same puzzles.
        torch.testing.assert_close(puzzles.apply(images.float() / 255, params), tiles)


def test_resizing_is_bilinear_to_the_image_size_antialiased_when_shrinking():
    puzzles = JigsawTiles(PERMUTATIONS, 64, 18)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(puzzles.resize(images), F.interpolate(images, size=(64, 64), mode="bilinear",
                                                                         align_corners=False))
    large = torch.rand(2, 3, 150, 150)
    torch.testing.assert_close(puzzles.resize(large),
                               F.interpolate(large, size=(64, 64), mode="bilinear", align_corners=False,
                                             antialias=True))
    assert puzzles.resize(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        puzzles.resize(torch.rand(2, 1, 32, 32))


def test_labels_are_uniform_over_the_set():
    puzzles = JigsawTiles(PERMUTATIONS, 64, 18)
    labels = puzzles.sample(30000, generator=torch.Generator().manual_seed(0))["permutation"]
    counts = torch.bincount(labels, minlength=30).float() / 30000
    assert labels.max() == 29 and torch.allclose(counts, torch.full((30,), 1 / 30), atol=0.006)


def test_colour_tiles_have_shifted_channels_and_grayscale_tiles_none():
    size, tile, jitter = 64, 18, 2
    puzzles = JigsawTiles(PERMUTATIONS, size, tile, grayscale_p=0.5, channel_jitter=jitter, normalize_tiles=False)
    n = 300
    params = puzzles.sample(n, generator=torch.Generator().manual_seed(4))
    gray, shift = params["grayscale"], params["channel_shift"]
    assert 0.4 < gray.float().mean() < 0.6
    assert (shift[gray] == 0).all()
    assert set(shift[~gray].unique().tolist()) == set(range(-jitter, jitter + 1))
    images = _coordinate_images(n, size)
    tiles = puzzles.grid_tiles(images, params)
    unshifted = puzzles.grid_tiles(images, {**params, "channel_shift": torch.zeros_like(shift),
                                            "grayscale": torch.zeros_like(gray)})
    # Grayscale images: the luma of the unshifted tile in all three channels.
    torch.testing.assert_close(tiles[gray], grayscale(unshifted[gray]).expand(-1, -1, 3, -1, -1))
    # Colour images: channel 0 (the row) of each tile is read shift[0] rows further, clamped to the tile.
    rows, _ = _pixel_coordinates(tiles[~gray], size)
    unshifted_rows, _ = _pixel_coordinates(unshifted[~gray], size)
    top = unshifted_rows[..., 0, 0]
    expected = top[..., None] + (torch.arange(tile) + shift[~gray][:, :, 0, 0, None]).clamp(0, tile - 1)
    assert torch.equal(rows, expected[..., None].expand_as(rows))
    assert not torch.equal(rows, unshifted_rows)
    # Channel 2 is flat: shifting it changes nothing, whatever the shift.
    torch.testing.assert_close(tiles[~gray][:, :, 2], unshifted[~gray][:, :, 2])


def test_each_tile_is_standardised_on_its_own():
    puzzles = JigsawTiles(PERMUTATIONS, 64, 18)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    # Tiles of different brightness and contrast, so standardisation has something to undo.
    images[:, :, :16] //= 4
    tiles, _ = puzzles(images, torch.Generator().manual_seed(0))
    variance, mean = torch.var_mean(tiles, dim=(-2, -1), correction=0)
    assert mean.abs().max() < 1e-5
    assert (variance.sqrt() - 1).abs().max() < 1e-3
    raw = JigsawTiles(PERMUTATIONS, 64, 18, normalize_tiles=False)(images, torch.Generator().manual_seed(0))[0]
    assert raw.mean(dim=(-2, -1)).min() > 0.0  # unstandardised tiles keep their [0, 1] statistics
    torch.testing.assert_close(standardize_tiles(raw), tiles)
    # A flat tile comes out 0, not NaN.
    flat = standardize_tiles(torch.full((1, 3, 4, 4), 0.7))
    assert not flat.isnan().any() and flat.abs().max() < 1e-3


def test_tile_arguments_are_validated():
    with pytest.raises(ValueError, match="cell size"):
        JigsawTiles(PERMUTATIONS, 64, 22)  # 64 px in 3 cells: 21 px each
    with pytest.raises(ValueError, match="square grid"):
        JigsawTiles(hamming_permutation_set(10, 5), 64, 18)
    with pytest.raises(ValueError, match="permutation of 0..8"):
        JigsawTiles(torch.zeros(4, 9, dtype=torch.long), 64, 18)
    with pytest.raises(ValueError, match="channel_jitter"):
        JigsawTiles(PERMUTATIONS, 64, 18, channel_jitter=18)
    # 2 x 2 puzzles work too: four tiles, cells of half the image.
    small = JigsawTiles(hamming_permutation_set(6, 4), 32, 14)
    tiles, labels = small(torch.rand(3, 3, 32, 32))
    assert tiles.shape == (3, 4, 3, 14, 14) and small.cell_size == 16


# ---- the method ------------------------------------------------------------------------

def test_jigsaw_method_feeds_each_image_nine_tiles_to_one_tower(cifar_root, tmp_path, monkeypatch):
    from conftest import compose_config

    from ssl_runner.methods import build_method

    monkeypatch.setenv("SSL_RUNNER_CACHE", str(tmp_path))
    cfg = compose_config(["method=jigsaw", "method.permutations=100", "experiment=smoke", f"data.root={cifar_root}",
                          "monitor.knn_every_n_epochs=0"])
    torch.manual_seed(0)
    module = build_method(cfg, 10, 64)
    assert module.classifier.output_dim == 100 and len(list(tmp_path.glob("*.pt"))) == 1  # the cached set
    tiles, labels = module.make_views(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert tiles.shape == (4, 9, 3, 18, 18) and labels.dtype == torch.long and 0 <= int(labels.min())
    assert int(labels.max()) < 100
    seen = []
    module.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    out = module.ssl_step([tiles, labels], torch.arange(4))
    # One shared tower over all 36 tiles, image by image, slot by slot.
    torch.testing.assert_close(seen[0], tiles.flatten(0, 1))
    assert out.features.shape == (4, module.feature_dim) and 0 < float(out.loss) < 2 * math.log(100)


def test_dataset_normalised_tiles_are_the_raw_tiles_with_the_data_sets_mean_and_std(cifar_root, tmp_path,
                                                                                     monkeypatch):
    """method.tile_normalization=dataset: no per-tile standardisation, the
    evaluation's (x - mean) / std instead, the same puzzle otherwise."""
    from conftest import compose_config

    from ssl_runner.errors import UserError
    from ssl_runner.methods import build_method

    monkeypatch.setenv("SSL_RUNNER_CACHE", str(tmp_path))
    overrides = ["method=jigsaw", "method.permutations=100", "experiment=smoke", f"data.root={cifar_root}"]
    cfg = compose_config(overrides + ["method.tile_normalization=dataset"])
    per_tile = build_method(compose_config(overrides), 10, 64).view_maker
    dataset = build_method(cfg, 10, 64).view_maker
    assert dataset.tiles.normalize_tiles is False and per_tile.mean is None
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    tiles, labels = dataset.views(images, generator=torch.Generator().manual_seed(3))
    standardised, same_labels = per_tile.views(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(labels, same_labels)
    mean = torch.tensor(list(cfg.data.mean)).view(3, 1, 1)
    std = torch.tensor(list(cfg.data.std)).view(3, 1, 1)
    raw = tiles * std + mean
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # [0, 1] pixels before the normalisation
    torch.testing.assert_close(standardize_tiles(raw), standardised, atol=1e-3, rtol=1e-3)
    with pytest.raises(UserError, match="tile_normalization"):
        compose_config(overrides + ["method.tile_normalization=image"])


@pytest.mark.integration
def test_jigsaw_smoke_run_completes(cifar_root, tmp_path):
    """The issue's command: exit 0 and a complete summary, the puzzle accuracy logged."""
    from conftest import run_method_cli

    _, rows = run_method_cli(cifar_root, tmp_path / "p-jigsaw", "method=jigsaw", "eval.random_baseline=false",
                             extra_env={"SSL_RUNNER_CACHE": str(tmp_path / "cache")})
    assert len([r for r in rows if r["train/permutation_top1"]]) == 2
