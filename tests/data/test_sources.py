"""Reading the datasets (ablation/data/sources.py): data that is missing or cannot be fetched is one line."""

import pytest

from ablation.core.errors import ConfigError


def test_missing_or_unfetchable_data_is_one_line_before_any_job(tmp_path):
    from ablation.data.sources import check_data
    from ablation.experiment.schema import DataConfig

    cases = [
        (DataConfig(dataset="npz", root=str(tmp_path / "none.npz")), "does not exist"),
        (DataConfig(dataset="npz"), "needs data.root"),
        (DataConfig(dataset="imagenet", root=str(tmp_path)), "has no train/ folder"),
        # Offline (as here and in CI), torchvision cannot fetch CIFAR: one line saying so.
        (DataConfig(dataset="cifar10", root=str(tmp_path / "cifar")), "could not be downloaded"),
    ]
    for data, expected in cases:
        with pytest.raises(ConfigError) as info:
            check_data(data)
        assert expected in str(info.value) and "\n" not in str(info.value)
        assert str(info.value).startswith("data.root:")
