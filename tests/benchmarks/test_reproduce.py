"""benchmarks/reproduce.py's presets say what its module doc says they run (the study itself is not part of CI)."""


def test_presets_plan_the_runs_the_doc_states(reproduce):
    assert reproduce.planned_runs(reproduce.PRESETS["smoke"]) == 64
    assert reproduce.planned_runs(reproduce.PRESETS["full"]) == 72


def test_both_data_sets_of_a_preset_share_its_protocol_and_crop_only_cifar10(reproduce):
    for preset in reproduce.PRESETS.values():
        cifar10, mnist = preset.datasets
        assert (cifar10.name, mnist.name) == ("cifar10", "rotated_mnist")
        assert (cifar10.crop_padding, mnist.crop_padding) == (4, 0)
        shared = ("batch_size", "steps", "augmult", "test_subset", "lrs_conventional")
        assert [getattr(cifar10, k) for k in shared] == [getattr(mnist, k) for k in shared], preset.name


def test_b64x140_samples_as_many_examples_per_run_as_full_in_4x_more_steps(reproduce):
    full, b64 = reproduce.PRESETS["full"], reproduce.PRESETS["b64x140"]
    for a, b in zip(full.datasets, b64.datasets):
        assert b.steps == 4 * a.steps and b.batch_size * b.steps == a.batch_size * a.steps
        assert (b.train_subset, b.val_size, b.test_subset) == (a.train_subset, a.val_size, a.test_subset)
