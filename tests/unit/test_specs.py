"""ensembles.specs: run/batch settings validation, member argv and env."""

import pytest

from ensembles.specs import SpecError, clean_batch_settings, clean_run_settings, member_argv, member_env

# --- clean_run_settings -------------------------------------------------------------


def test_clean_run_settings_minimal_gives_normalised_defaults():
    assert clean_run_settings({"exe": "  python  "}) == {
        "exe": "python",
        "exe_args": [],
        "env_vars": {},
        "run_command": "",
        "run_args": {},
    }


def test_clean_run_settings_full_is_normalised():
    cleaned = clean_run_settings(
        {
            "exe": "/usr/bin/python3",
            "exe_args": ["sleep.py", "--time", "hello world"],
            "env_vars": {"OMP_NUM_THREADS": 4, "_X": "y", "EMPTY": None, "FLAG": True},
            "run_command": "srun",
            "run_args": {"n": 4, "exclusive": None, "cpu-bind": "cores"},
        }
    )
    assert cleaned == {
        "exe": "/usr/bin/python3",
        "exe_args": ["sleep.py", "--time", "hello world"],
        "env_vars": {"OMP_NUM_THREADS": "4", "_X": "y", "EMPTY": "", "FLAG": "True"},
        "run_command": "srun",
        "run_args": {"n": "4", "exclusive": None, "cpu-bind": "cores"},
    }


@pytest.mark.parametrize(
    "settings", [None, {}, {"exe": ""}, {"exe": "   "}, {"exe": None}, {"exe_args": ["a"]}]
)
def test_clean_run_settings_requires_exe(settings):
    with pytest.raises(SpecError) as info:
        clean_run_settings(settings)
    assert info.value.field == "exe"


@pytest.mark.parametrize("exe", [5, ["python"], "py\x00thon"])
def test_clean_run_settings_refuses_exe_that_is_not_clean_text(exe):
    with pytest.raises(SpecError) as info:
        clean_run_settings({"exe": exe})
    assert info.value.field == "exe"


@pytest.mark.parametrize("key", ["bogus", "exe_arg", "batch_settings"])
def test_clean_run_settings_rejects_unknown_keys(key):
    with pytest.raises(SpecError, match=key) as info:
        clean_run_settings({"exe": "python", key: 1})
    assert info.value.field == "run_settings"


def test_clean_run_settings_rejects_a_non_mapping():
    with pytest.raises(SpecError) as info:
        clean_run_settings(["exe", "python"])
    assert info.value.field == "run_settings"


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "A=B", "É", 5])
def test_clean_run_settings_rejects_bad_env_names(name):
    with pytest.raises(SpecError) as info:
        clean_run_settings({"exe": "python", "env_vars": {name: "x"}})
    assert info.value.field == "env_vars"


@pytest.mark.parametrize("env", [["A=1"], "A=1", {"A": [1]}, {"A": {"b": 1}}])
def test_clean_run_settings_rejects_bad_env_vars(env):
    with pytest.raises(SpecError) as info:
        clean_run_settings({"exe": "python", "env_vars": env})
    assert info.value.field == "env_vars"


@pytest.mark.parametrize(
    "exe_args", ["sleep.py 10", ("sleep.py",), {"a": 1}, 5, ["ok", 1], ["ok", None], ["a\x00b"]]
)
def test_clean_run_settings_rejects_exe_args_that_are_not_a_list_of_text(exe_args):
    with pytest.raises(SpecError) as info:
        clean_run_settings({"exe": "python", "exe_args": exe_args})
    assert info.value.field == "exe_args"


@pytest.mark.parametrize("run_args", [{"bad name": "1"}, {"": "1"}, {"n": [1]}, ["n"]])
def test_clean_run_settings_rejects_bad_run_args(run_args):
    with pytest.raises(SpecError) as info:
        clean_run_settings({"exe": "python", "run_args": run_args})
    assert info.value.field == "run_args"


def test_spec_error_is_a_value_error_naming_the_field():
    error = SpecError("exe", "is required")
    assert isinstance(error, ValueError)
    assert error.field == "exe"
    assert "exe" in str(error)


# --- clean_batch_settings --------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [None, {}, {"nodes": None}, {"nodes": "", "time": ""}, {"account": "  ", "queue": None, "batch_args": {}}],
)
def test_clean_batch_settings_empty_gives_none(settings):
    assert clean_batch_settings(settings) is None


@pytest.mark.parametrize("nodes", [1, 2, 128])
def test_clean_batch_settings_accepts_nodes_of_at_least_one(nodes):
    assert clean_batch_settings({"nodes": nodes})["nodes"] == nodes


@pytest.mark.parametrize("nodes", [0, -1, True, 1.5, "2", [1]])
def test_clean_batch_settings_rejects_bad_nodes(nodes):
    with pytest.raises(SpecError) as info:
        clean_batch_settings({"nodes": nodes})
    assert info.value.field == "nodes"


@pytest.mark.parametrize("time", ["30", "30:00", "1:30:00", "2-00", "2-00:00", "2-00:00:00", " 10:00 "])
def test_clean_batch_settings_accepts_walltimes(time):
    assert clean_batch_settings({"time": time})["time"] == time.strip()


@pytest.mark.parametrize("time", ["abc", "1h", "1:2:3:4", "1:300", "-1", "1:", ":30", "2-", "1 30", "1.5"])
def test_clean_batch_settings_rejects_bad_walltimes(time):
    with pytest.raises(SpecError) as info:
        clean_batch_settings({"time": time})
    assert info.value.field == "time"


def test_clean_batch_settings_full_is_normalised():
    assert clean_batch_settings(
        {"nodes": 2, "time": "1:00:00", "account": " proj ", "queue": "debug", "batch_args": {"exclusive": None}}
    ) == {"nodes": 2, "time": "1:00:00", "account": "proj", "queue": "debug", "batch_args": {"exclusive": None}}


def test_clean_batch_settings_rejects_unknown_keys():
    with pytest.raises(SpecError, match="walltime") as info:
        clean_batch_settings({"walltime": "1:00:00"})
    assert info.value.field == "batch_settings"


# --- member_argv / member_env -----------------------------------------------------------


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"H": 5, "g_param": "a"}, ["python", "sleep.py", "-H", "5", "--g_param=a"]),
        ({"H": 6, "g_param": "b"}, ["python", "sleep.py", "-H", "6", "--g_param=b"]),
    ],
)
def test_member_argv_smartsim_params_as_args(params, expected):
    run_settings = {"exe": "python", "exe_args": ["sleep.py"]}
    assert member_argv(run_settings, params, ["H", "g_param"]) == expected


def test_member_argv_puts_run_command_and_run_args_first():
    run_settings = clean_run_settings(
        {
            "exe": "python",
            "exe_args": ["sim.py"],
            "run_command": "srun",
            "run_args": {"n": 4, "nodes": 2, "exclusive": None, "--mpi": "pmix"},
        }
    )
    assert member_argv(run_settings, {"steps": 10}, ["steps"]) == [
        "srun", "-n", "4", "--nodes=2", "--exclusive", "--mpi=pmix", "python", "sim.py", "--steps=10",
    ]


def test_member_argv_never_splits_values_on_spaces():
    run_settings = {"exe": "echo", "exe_args": ["hello world"]}
    assert member_argv(run_settings, {"m": "a b", "msg": "c  d"}, ["m", "msg"]) == [
        "echo", "hello world", "-m", "a b", "--msg=c  d",
    ]


def test_member_argv_without_params_as_args_ignores_params():
    assert member_argv({"exe": "true"}, {"A": 1}) == ["true"]


def test_member_env_adds_smartsim_variables():
    run_settings = {"exe": "python", "env_vars": {"A": "1"}}
    env = member_env(run_settings, "ens_0", key_prefixing=True, incoming=["m1", "m2"], db_address="127.0.0.1:6379")
    assert env == {
        "A": "1",
        "SSKEYOUT": "ens_0",
        "SSKEYIN": "m1,m2",
        "SSDB": "127.0.0.1:6379",
        "SR_DB_TYPE": "Standalone",
    }
    assert run_settings["env_vars"] == {"A": "1"}  # not mutated


def test_member_env_without_options_is_just_env_vars():
    assert member_env({"exe": "x", "env_vars": {"A": "1"}}, "ens_0", key_prefixing=False) == {"A": "1"}
    assert member_env({"exe": "x"}, "ens_0", key_prefixing=False) == {}


def test_member_argv_writes_values_as_typed():
    from ensembles.expansion import expand
    from ensembles.values import parse_values

    member = expand({"flag": parse_values("true"), "lr": parse_values("1e-3"), "x": parse_values("0.10")})[0]
    run_settings = {"exe": "sim"}
    assert member_argv(run_settings, member, ["flag", "lr", "x"]) == ["sim", "--flag=true", "--lr=1e-3", "-x", "0.10"]
    # Typed values with their texts kept apart (as stored for a member run).
    assert member_argv(run_settings, {"flag": True, "n": 3}, ["flag", "n"], texts={"flag": "TRUE"}) == [
        "sim", "--flag=TRUE", "-n", "3",
    ]
