#!/usr/bin/env bash
# Fetches the Apache Kafka broker jars (KRaft, single node) through Maven into a cache outside
# the clone, for rung 3 of the broker ladder (idproxy/broker_ladder.py). Idempotent.
#   KAFKA_VERSION   default 4.1.0 (Scala 2.13 build)
#   IDPROXY_KAFKA_JARS  destination, default ${IDPROXY_CACHE_DIR:-~/.cache/idproxy}/kafka-$KAFKA_VERSION/libs
set -euo pipefail
version="${KAFKA_VERSION:-4.1.0}"
dest="${IDPROXY_KAFKA_JARS:-${IDPROXY_CACHE_DIR:-$HOME/.cache/idproxy}/kafka-$version/libs}"
if [ -f "$dest/.complete" ]; then
  echo "[kafka] jars ready in $dest"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>idproxy</groupId><artifactId>kafka-broker-jars</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
POM
echo "[kafka] fetching Apache Kafka $version jars through Maven into $dest"
mkdir -p "$dest"
mvn -q -f "$work/pom.xml" dependency:copy-dependencies -DoutputDirectory="$dest" -DincludeScope=runtime
touch "$dest/.complete"
echo "[kafka] jars ready in $dest ($(ls "$dest" | wc -l) files)"
