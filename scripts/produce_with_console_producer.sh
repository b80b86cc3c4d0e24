#!/usr/bin/env bash
# Produces JSON lines to a topic with Apache Kafka's own console producer (Java), from the
# jars scripts/fetch_kafka.sh fetches: a producer that is not Python (docs/WIRE_FORMAT.md).
#
#   scripts/produce_with_console_producer.sh BOOTSTRAP TOPIC FILE [KEY_SEPARATOR]
#
#   FILE           one event per line (JSON on one line; schemas/*.schema.json); '-' = stdin
#   KEY_SEPARATOR  when given, each line is "<key><separator><json>" (e.g. $'\t' or '|'):
#                  items are keyed by item id, clicks by user id. Without it: no keys.
#
# Environment:
#   IDPROXY_KAFKA_JARS  the jars folder (default: $KAFKA_HOME/libs if KAFKA_HOME is set, else
#                       ${IDPROXY_CACHE_DIR:-~/.cache/idproxy}/kafka-${KAFKA_VERSION:-4.1.0}/libs)
#   PRODUCER_OPTS       extra ConsoleProducer options, e.g.
#                       "--compression-codec lz4 --producer.config client.properties" (SASL/TLS)
#   JAVA                the java binary (default: java on PATH)
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  sed -n '4,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
bootstrap="$1" topic="$2" file="$3" separator="${4:-}"
version="${KAFKA_VERSION:-4.1.0}"
if [ -n "${IDPROXY_KAFKA_JARS:-}" ]; then
  jars="$IDPROXY_KAFKA_JARS"
elif [ -n "${KAFKA_HOME:-}" ]; then
  jars="$KAFKA_HOME/libs"
else
  jars="${IDPROXY_CACHE_DIR:-$HOME/.cache/idproxy}/kafka-$version/libs"
fi
java="${JAVA:-$(command -v java || true)}"
if [ -z "$java" ]; then
  echo "error: java is not on PATH" >&2
  exit 3
fi
if ! compgen -G "$jars/kafka-tools-*.jar" >/dev/null; then
  echo "error: no Kafka tools jar in $jars (run scripts/fetch_kafka.sh or set KAFKA_HOME)" >&2
  exit 3
fi
if [ "$file" != "-" ] && [ ! -r "$file" ]; then
  echo "error: cannot read $file" >&2
  exit 2
fi

# the tools log through slf4j-reload4j: warnings and errors only, on stderr
log_config="$(mktemp)"
trap 'rm -f "$log_config"' EXIT
cat > "$log_config" <<'PROPS'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
PROPS

args=(--bootstrap-server "$bootstrap" --topic "$topic")  # acks=all is the tool's default
if [ -n "$separator" ]; then
  args+=(--property parse.key=true --property "key.separator=$separator")
fi
# shellcheck disable=SC2206  # PRODUCER_OPTS is split on purpose
extra=(${PRODUCER_OPTS:-})
input="$file"
[ "$file" = "-" ] && input=/dev/stdin
"$java" -Xmx256m -Dlog4j.configuration="file:$log_config" -cp "$jars/*" \
  org.apache.kafka.tools.ConsoleProducer "${args[@]}" "${extra[@]}" < "$input"
