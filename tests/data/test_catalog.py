"""The datasets' catalog (ablation/data/catalog.py): an .npz that is malformed or damaged fails before any run
exists, in one line naming the file and the problem."""

import zipfile

import numpy as np
import pytest

from ablation.core.errors import ConfigError
from ablation.data.catalog import dataset_info
from ablation.experiment.schema import parse_run_config


def _write_npz(path, **changes):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8),
        "y_train": np.arange(20) % 4,
        "x_test": rng.integers(0, 255, (8, 8, 8, 3), dtype=np.uint8),
        "y_test": np.arange(8) % 4,
        "classes": np.array(["a", "b", "c", "d"]),
    }
    arrays.update(changes)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"x_train": np.zeros((20, 8, 8, 3), dtype=np.float32)}, "dtype float32; images must be uint8"),
        ({"y_test": np.array([0, 1, 2, 3, 4, 5, 6, 7])}, "label 4, outside the 4 classes"),
        ({"y_train": np.arange(20) - 1}, "label -1, outside the 4 classes"),
        ({"y_train": np.arange(20) * 0.5}, "labels must be integers"),
        ({"x_test": np.zeros((8, 16, 16, 3), dtype=np.uint8)}, "mixed sizes"),
        ({"x_train": np.zeros((0, 8, 8, 3), dtype=np.uint8), "y_train": np.zeros(0, int)}, "holds no images"),
        ({"y_train": np.arange(19) % 4}, "one label per image"),
        ({"classes": np.array(["only"])}, "at least 2 class names"),
    ],
)
def test_a_malformed_npz_is_one_line_naming_the_file_and_the_problem(tmp_path, changes, words):
    path = _write_npz(tmp_path / "bad.npz", **changes)
    with pytest.raises(ConfigError) as error:
        dataset_info(parse_run_config({"data": {"dataset": "npz", "root": str(path)}}).data)
    message = str(error.value)
    assert message.startswith("data.root:") and str(path) in message and words in message, message
    assert "\n" not in message


@pytest.mark.parametrize("where", ["first bytes", "last bytes"])
def test_a_damaged_npz_member_fails_its_crc_check(tmp_path, where):
    """np.savez stores members uncompressed, so a flipped byte is silently different pixels unless the CRC is read;
    a damage near a member's end is past what reading the array headers touches."""
    rng = np.random.default_rng(0)
    path = _write_npz(
        tmp_path / "good.npz",
        x_train=rng.integers(0, 255, (2000, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(2000) % 4,
    )
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("x_train.npy")
    data_start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    offset = data_start + 200 if where == "first bytes" else data_start + info.compress_size - 10
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(ConfigError) as error:
        dataset_info(parse_run_config({"data": {"dataset": "npz", "root": str(damaged)}}).data)
    assert "x_train.npy" in str(error.value) and "CRC" in str(error.value), error.value
