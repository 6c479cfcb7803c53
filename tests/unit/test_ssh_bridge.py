"""The ssh command an ssh:// engine address becomes (the bridge itself is driven
against a real sshd in tests/test_engines.py)."""

import pytest

from omcp_py.ssh_bridge import ssh_command


def test_user_host_and_port_become_ssh_options() -> None:
    command = ssh_command("ssh://alice@engine.example:2222")
    assert command[:1] == ["ssh"] and "BatchMode=yes" in command  # never prompts
    assert command[command.index("-l") + 1] == "alice"
    assert command[command.index("-p") + 1] == "2222"
    assert command[command.index("--") + 1 :] == [
        "engine.example",
        "docker",
        "system",
        "dial-stdio",
    ]


def test_a_bare_host_leaves_user_and_port_to_the_ssh_configuration() -> None:
    command = ssh_command("ssh://engine")
    assert "-l" not in command and "-p" not in command
    assert command[-4:] == ["engine", "docker", "system", "dial-stdio"]


@pytest.mark.parametrize(
    "url", ["tcp://engine:2376", "ssh://", "ssh://engine/var/run/docker.sock", "engine"]
)
def test_other_addresses_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="is not ssh://"):
        ssh_command(url)
