"""A destination's `shared_filesystem: false` and `staging:` block: checked when the job_conf
loads, every problem named with its file, line and key."""
from __future__ import annotations

from pathlib import Path

import pytest

from galaxy_tasks import routing
from galaxy_tasks.errors import ConfigError, RunnerUnavailable, StagingError, StagingUnreachable
from galaxy_tasks.runners.params import describe
from galaxy_tasks.staging.rsync import Rsync
from galaxy_tasks.staging.settings import StagingSettings

GOOD = ("    shared_filesystem: false\n    staging:\n      host: submitter.example.org\n      user: galaxy\n"
        "      identity_file: /etc/galaxy-tasks/staging_key\n      root: /scratch/staged\n      max_bytes: 1000000\n")


def _load(tmp_path: Path, destination: str) -> routing.Routing:
    path = tmp_path / "job_conf.yml"
    path.write_text("destinations:\n  far:\n    runner: local\n" + destination)
    return routing.load(path)


def _refusal(tmp_path: Path, destination: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, destination)
    return str(info.value).split(": ", 1)[1]


def test_staging_destination_loads_with_its_settings(tmp_path):
    far = _load(tmp_path, GOOD).destinations["far"]
    assert far.staging == StagingSettings(host="submitter.example.org", user="galaxy",
                                          identity_file="/etc/galaxy-tasks/staging_key", root="/scratch/staged",
                                          max_bytes=1000000)


def test_staging_a_destination_shares_a_filesystem_by_default(tmp_path):
    assert _load(tmp_path, "    max_cores: 2\n").destinations["far"].staging is None


def test_staging_block_needs_shared_filesystem_false(tmp_path):
    assert _refusal(tmp_path, GOOD.replace("false", "true")).startswith(
        "destinations.far.staging: only a destination with `shared_filesystem: false` stages files")


def test_staging_no_shared_filesystem_needs_a_staging_block(tmp_path):
    assert _refusal(tmp_path, "    shared_filesystem: false\n").startswith(
        "destinations.far.shared_filesystem: a destination without a shared filesystem needs a `staging:` block")


@pytest.mark.parametrize("line, named", [
    ("      host: submitter.example.org\n", "host"),
    ("      identity_file: /etc/galaxy-tasks/staging_key\n", "identity_file"),
    ("      max_bytes: 1000000\n", "max_bytes"),
])
def test_staging_required_settings_are_named(tmp_path, line, named):
    assert _refusal(tmp_path, GOOD.replace(line, "")) == f"destinations.far.staging: needs {named}"


@pytest.mark.parametrize("key, value, said", [
    ("root", "scratch", "'scratch' must be an absolute path"),
    ("host", "'a b'", "'a b' is not a host name or address"),
    ("host", "-oProxyCommand=x", "'-oProxyCommand=x' is not a host name or address"),
    ("user", "-x", "'-x' is not a user name"),
    ("transfer", "ftp", "must be one of rsync, http"),
    ("password", "x", "unknown param"),
])
def test_staging_bad_settings_are_refused(tmp_path, key, value, said):
    kept = "".join(line + "\n" for line in GOOD.splitlines() if not line.startswith(f"      {key}:"))
    assert said in _refusal(tmp_path, kept + f"      {key}: {value}\n")


@pytest.mark.parametrize("said, later", [
    ("ssh: connect to host 127.0.0.1 port 2299: Connection refused", True),
    ("ssh: connect to host far.example.org port 22: Connection timed out", True),
    ("kex_exchange_identification: read: Connection reset by peer", True),
    ("Host key verification failed.", False),
    ("root@127.0.0.1: Permission denied (publickey).", False),
])
def test_staging_an_unreachable_submitter_is_tried_later_a_refused_login_fails_the_job(said, later):
    """The network's fault is retried (RunnerUnavailable); a refused key or a changed host
    key is the set-up's, and fails the job with ssh's words."""
    failing = ["sh", "-c", f"echo '{said}' >&2; exit 255"]
    with pytest.raises(StagingUnreachable if later else StagingError) as raised:
        Rsync._run(failing, None)
    assert isinstance(raised.value, StagingUnreachable) == later and said in str(raised.value)
    assert isinstance(raised.value, RunnerUnavailable) == later


HTTP = ("    shared_filesystem: false\n    staging:\n      transfer: http\n"
        "      url: https://submitter.example.org:8443\n      ca_file: /etc/galaxy-tasks/ca.pem\n"
        "      root: /scratch/staged\n      max_bytes: 1000000\n")


def test_staging_http_destination_loads_with_its_settings(tmp_path):
    far = _load(tmp_path, HTTP).destinations["far"]
    assert far.staging == StagingSettings(transfer="http", url="https://submitter.example.org:8443",
                                          ca_file="/etc/galaxy-tasks/ca.pem", root="/scratch/staged",
                                          max_bytes=1000000)


def test_staging_http_needs_its_url_and_no_ssh_settings(tmp_path):
    assert _refusal(tmp_path, HTTP.replace("      url: https://submitter.example.org:8443\n", "")) == \
        "destinations.far.staging: needs url"
    assert _refusal(tmp_path, HTTP + "      identity_file: /etc/key\n") == \
        "destinations.far.staging: identity_file not used by `transfer: http`"
    assert _refusal(tmp_path, GOOD + "      url: http://x.example.org\n") == \
        "destinations.far.staging: url not used by `transfer: rsync`"


@pytest.mark.parametrize("url", ["ftp://x.example.org", "https://user:pw@x.example.org", "x.example.org",
                                 "https://x.example.org/?a=1"])
def test_staging_http_bad_url_is_refused(tmp_path, url):
    assert "is not an http:// or https:// URL" in _refusal(
        tmp_path, HTTP.replace("https://submitter.example.org:8443", url))


def test_staging_settings_table_in_the_docs_follows_the_code():
    """docs/staging.md's table of the `staging:` block is the dataclass's own: every setting,
    its type, default and meaning."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "staging.md").read_text()
    for name, kind, default, doc in describe(StagingSettings):
        shown = "(none)" if default in (None, "") else f"`{default}`"
        assert f"| `{name}` | {kind} | {shown} | {doc} |" in text, name
