#!/usr/bin/env bash
# Installs what pos-cdc and its tests need on a fresh Debian machine, skipping what is already there:
# Debian's PostgreSQL server (and pgbench), Prometheus' promtool, Java 17 and Maven, a C compiler and Python's
# headers (the install compiles the hot modules of cdc/hotpath.py with Cython, which pip fetches), Apache
# Kafka's jars (into .cache/kafka/libs, for the local broker of the tests, the demo and the benchmarks), and the
# Python package with its extras into the project's virtual environment .venv (POS_CDC_VENV elsewhere; PYTHON
# picks the interpreter that makes it). --with-test-tools adds what only the tests need: promtool, MariaDB, and
# Kafka Connect with Debezium's PostgreSQL connector (.cache/kafka/connect-libs).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

need=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || need+=(postgresql postgresql-contrib)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ "${1:-}" = "--with-test-tools" ]; then
  command -v promtool >/dev/null || need+=(prometheus)
  [ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null || need+=(mariadb-server)
  command -v tmux >/dev/null || need+=(tmux)  # the demo's test on a real terminal
fi
PY="${PYTHON:-python3}"
VENV="${POS_CDC_VENV:-.venv}"
# the C compiler the interpreter builds extensions with (gcc; Debian's python3 names it x86_64-linux-gnu-gcc),
# C's own headers (gcc's recommended libc6-dev), and Python.h: Debian's python3-dev when the interpreter is
# Debian's (pyenv and the like ship theirs). Without them pos-cdc still installs, as pure Python.
BUILD_PY="$PY"
[ -x "$VENV/bin/python" ] && BUILD_PY="$VENV/bin/python"
read -r py_cc py_include py_prefix < <("$BUILD_PY" -c 'import sys, sysconfig as c
print((c.get_config_var("CC") or "gcc").split()[0], c.get_paths()["include"], sys.base_prefix)')
command -v "$py_cc" >/dev/null || need+=(gcc)
[ -f /usr/include/stdio.h ] || need+=(libc6-dev)
if [ ! -f "$py_include/Python.h" ]; then
  if [ "$py_prefix" = /usr ]; then need+=(python3-dev); else
    echo "setup: $BUILD_PY has no Python.h ($py_include): the hot modules will stay pure Python"
  fi
fi
# the Python packages go into a virtual environment of the project's own (.venv), never the system's
[ -x "$VENV/bin/python" ] || "$PY" -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  # no daemons: the tests and the demo start their own throwaway servers
  echo exit 101 | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: making the virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# the demo needs the runtime only; the tests add MariaDB's driver, confluent-kafka and the test tools
if [ "${1:-}" = "--with-test-tools" ]; then extras="all"; else extras="runtime"; fi
stamp="$VENV/.installed-$extras"
# again when the packaging changed, or a compiled module's .py or .pxd since the last build (its extension is
# stale; a .pxd that is not there is never newer)
rebuild=""
for f in pyproject.toml setup.py cdc/hotpath.py $("$BUILD_PY" -c 'import cdc.hotpath as h; print(*(n.replace(".", "/") + x for n in h.COMPILED for x in (".py", ".pxd")))'); do
  if [ "$f" -nt "$stamp" ]; then rebuild=yes; fi
done
if [ ! -f "$stamp" ] || [ -n "$rebuild" ]; then
  spec="."
  [ "$extras" = all ] && spec=".[all]"
  echo "setup: pip install -e '$spec' into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
  touch "$stamp"
fi
echo "setup: hot path: $("$VENV/bin/python" -c 'import cdc.hotpath as h; print(h.summary())')"

# fetch_jars PROFILE DIR WHAT: the runtime classpath of a scripts/kafka/pom.xml profile, copied into a fresh dir
# that replaces DIR only once complete; the .fetched stamp is what cdc/localkafka.py and cdc/localconnect.py
# check. Again when the pom changes.
fetch_jars() {
  local profile=$1 dir=$2 what=$3 log=.cache/$1-fetch.log
  if [ -f "$dir/.fetched" ] && [ ! scripts/kafka/pom.xml -nt "$dir/.fetched" ]; then return; fi
  echo "setup: fetching $what with Maven into $dir"
  rm -rf "$dir.tmp"
  if ! mvn -q -B -f scripts/kafka/pom.xml -P "$profile" dependency:copy-dependencies \
      -DoutputDirectory="$PWD/$dir.tmp" -DincludeScope=runtime >"$log" 2>&1; then
    cat "$log"
    echo "setup: fetching $what failed (log above, also in $log)"
    exit 1
  fi
  touch "$dir.tmp/.fetched"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}
mkdir -p .cache/kafka
# Apache Kafka's broker and tools, for the local broker of the tests, the demo and the benchmarks
fetch_jars broker .cache/kafka/libs "Apache Kafka's jars"
# Kafka Connect standalone with the genuine Debezium PostgreSQL connector (the interoperability tests and
# benchmarks; cdc/localconnect.py), on a classpath of its own
if [ "${1:-}" = "--with-test-tools" ]; then
  fetch_jars connect .cache/kafka/connect-libs "Kafka Connect and Debezium's PostgreSQL connector"
fi
