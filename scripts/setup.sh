#!/usr/bin/env bash
# Installs what pos-cdc and its tests need on a fresh Debian machine, skipping what is already there:
# Debian's PostgreSQL server (and pgbench), Prometheus' promtool, Java 17 and Maven, Apache Kafka's jars
# (into .cache/kafka/libs, for the local broker of the tests, the demo and the benchmarks), and the Python
# package with its extras. --with-test-tools adds what only the tests need: promtool, MariaDB, and Kafka
# Connect with Debezium's PostgreSQL connector (.cache/kafka/connect-libs).
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
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  # no daemons: the tests and the demo start their own throwaway servers
  echo exit 101 | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c "import cdc, pytest, hypothesis, pytest_timeout, pymysql, kafka, crc32c, confluent_kafka" 2>/dev/null || [ pyproject.toml -nt .cache/.installed ]; then
  echo "setup: pip install -e '.[all]'"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[all]'
  mkdir -p .cache && touch .cache/.installed
fi

# Apache Kafka's broker and tools (scripts/kafka/pom.xml), copied into a fresh dir that replaces the old one
# only once complete; the .fetched stamp is what cdc/localkafka.py checks. Again when the pom changes.
KAFKA_LIBS=.cache/kafka/libs
mkdir -p .cache/kafka
if [ ! -f "$KAFKA_LIBS/.fetched" ] || [ scripts/kafka/pom.xml -nt "$KAFKA_LIBS/.fetched" ]; then
  echo "setup: fetching Apache Kafka's jars with Maven into $KAFKA_LIBS"
  rm -rf "$KAFKA_LIBS.tmp"
  if ! mvn -q -B -f scripts/kafka/pom.xml -P broker dependency:copy-dependencies \
      -DoutputDirectory="$PWD/$KAFKA_LIBS.tmp" -DincludeScope=runtime >.cache/kafka-fetch.log 2>&1; then
    cat .cache/kafka-fetch.log
    echo "setup: fetching Kafka's jars failed (log above, also in .cache/kafka-fetch.log)"
    exit 1
  fi
  touch "$KAFKA_LIBS.tmp/.fetched"
  rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
fi

# Kafka Connect standalone with the genuine Debezium PostgreSQL connector (the interoperability tests and
# benchmarks, with --with-test-tools; cdc/localconnect.py), on a classpath of its own, the same way
CONNECT_LIBS=.cache/kafka/connect-libs
if [ "${1:-}" = "--with-test-tools" ] && { [ ! -f "$CONNECT_LIBS/.fetched" ] || [ scripts/kafka/pom.xml -nt "$CONNECT_LIBS/.fetched" ]; }; then
  echo "setup: fetching Kafka Connect and Debezium's PostgreSQL connector with Maven into $CONNECT_LIBS"
  rm -rf "$CONNECT_LIBS.tmp"
  if ! mvn -q -B -f scripts/kafka/pom.xml -P connect dependency:copy-dependencies \
      -DoutputDirectory="$PWD/$CONNECT_LIBS.tmp" -DincludeScope=runtime >.cache/connect-fetch.log 2>&1; then
    cat .cache/connect-fetch.log
    echo "setup: fetching Kafka Connect and Debezium's jars failed (log above, also in .cache/connect-fetch.log)"
    exit 1
  fi
  touch "$CONNECT_LIBS.tmp/.fetched"
  rm -rf "$CONNECT_LIBS" && mv "$CONNECT_LIBS.tmp" "$CONNECT_LIBS"
fi
