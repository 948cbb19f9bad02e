"""A stand-in for `ssh` in Open MPI's rsh launcher, for tests that simulate several nodes on one machine.

mpirun calls `<agent> <plm_rsh_args> <host> <remote command...>`; this agent records the call (to the file in
$LOCAL_RSH_AGENT_LOG), skips the ssh options, and runs the remote command here with /bin/sh, as sshd on the
worker would. Everything before the hop - hostfile, SSH options, forwarded environment - is the real thing.
"""

from __future__ import annotations

import json
import os
import sys

# ssh options that take a value (the rest are single flags).
OPTIONS_WITH_VALUE = {"-i", "-p", "-o", "-l", "-F", "-J"}


def main(argv: list[str]) -> None:
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in OPTIONS_WITH_VALUE else 1
    options, host, command = argv[:i], argv[i], " ".join(argv[i + 1 :])
    log = os.environ.get("LOCAL_RSH_AGENT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"options": options, "host": host, "command": command}) + "\n")
    os.execv("/bin/sh", ["/bin/sh", "-c", command])


if __name__ == "__main__":
    main(sys.argv[1:])
