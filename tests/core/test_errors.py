"""The errors users see (ablation/core/errors.py): one line naming the key, the bad value and what is allowed, or the
store, its URI and why it cannot be used."""

from ablation.core.errors import ConfigError, StoreError


def test_a_config_error_names_key_value_and_what_is_allowed():
    error = ConfigError("train.lr", -0.1, "allowed: a number >= 0")
    assert str(error) == "train.lr: -0.1 is not allowed; allowed: a number >= 0"
    assert (error.key, error.value, error.allowed) == ("train.lr", -0.1, "allowed: a number >= 0")
    assert isinstance(error, ValueError)


def test_an_allowed_text_that_says_what_is_wrong_follows_the_value():
    folder = ConfigError("data.root", ".", "is a folder; allowed: an .npz file")
    assert str(folder) == "data.root: '.' is a folder; allowed: an .npz file"
    empty = ConfigError("experiment", "bad.yaml", "", sentence="bad.yaml: the file is empty")
    assert str(empty) == "experiment: bad.yaml: the file is empty"


def test_a_store_error_is_one_line_whatever_the_driver_said():
    cause = 'could not connect to server: Connection refused\n\tIs the server running on host "db"?\n'
    error = StoreError("--storage", "postgresql://db/sweeps", cause)
    assert str(error) == (
        "--storage postgresql://db/sweeps: could not connect to server: Connection refused "
        'Is the server running on host "db"?'
    )
    assert error.cause == cause and isinstance(error, RuntimeError)
