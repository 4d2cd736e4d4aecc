#!/bin/sh
# The code interpreter image's boot profile: lohar runs it as root after it listens (see
# crates/lohar/README.md). Starts the code interpreter server (port 49999) as the unprivileged
# user, detached (its own session), its output in /var/log/code-interpreter.log.
cd /home/user || exit 1
setsid runuser -u lohar -- env HOME=/home/lohar \
    MPLBACKEND=module://matplotlib_inline.backend_inline \
    python3 /opt/bhatti/code-interpreter/server.py \
    >> /var/log/code-interpreter.log 2>&1 < /dev/null &
echo "code interpreter server started (pid $!), log /var/log/code-interpreter.log"
