{{/*
In-cluster backing services for kind (dev-services.enabled): upstream images, one replica, a
PersistentVolumeClaim each, the same hardening as the chart's own containers (each image's
own non-root uid, read-only root filesystem: every path a service writes is a volume, which
tests/chart checks), each behind a headless Service (the StatefulSet's governing Service).

(dict "root" $ "name" "postgresql" "uid" 999 "ports" (list (dict "name" .. "port" ..))
      "data" "/path") and what is particular to the service from template
"objectflow.dev.<name>": YAML with `container` (merged into the container), `mounts`,
`volumes` and `initContainers`.
*/}}
{{- define "objectflow.devStatefulSet" -}}
{{- $root := .root -}}
{{- $own := include (printf "objectflow.dev.%s" .name) $root | fromYaml -}}
{{- $dev := index $root.Values "dev-services" -}}
{{- $host := include "objectflow.devHost" (list $root .name) -}}
{{- $labels := dict "root" $root "component" .name -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $host }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "objectflow.labels" $labels | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "objectflow.podLabels" $labels | nindent 4 }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .port }}
    {{- end }}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $host }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "objectflow.labels" $labels | nindent 4 }}
spec:
  serviceName: {{ $host }}
  replicas: 1
  selector:
    matchLabels:
      {{- include "objectflow.podLabels" $labels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "objectflow.podLabels" $labels | nindent 8 }}
    spec:
      automountServiceAccountToken: false
      # Service links would put KAFKA_PORT=tcp://... and the like into the environment, which
      # these images read as settings.
      enableServiceLinks: false
      securityContext:
        runAsNonRoot: true
        fsGroup: {{ .uid }}
        seccompProfile:
          type: RuntimeDefault
      {{- with $own.initContainers }}
      initContainers:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ index $dev.images .name }}
          {{- with $own.container }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
          ports:
            {{- range .ports }}
            - name: {{ .name }}
              containerPort: {{ .port }}
            {{- end }}
          readinessProbe:
            tcpSocket:
              port: {{ (first .ports).port }}
            periodSeconds: 5
          resources:
            requests:
              cpu: 50m
              memory: 128Mi
          securityContext:
            {{- include "objectflow.securityContext" .uid | nindent 12 }}
          volumeMounts:
            - name: data
              mountPath: {{ .data }}
            {{- include "objectflow.tmpMount" . | nindent 12 }}
            {{- with $own.mounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "objectflow.tmpVolume" . | nindent 8 }}
        {{- with $own.volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        {{- with index $dev "storage-class" }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $dev.storage }}
{{- end }}

{{/* An env entry from the chart's Secret: (list $ "ENV_NAME" "SECRET_KEY") */}}
{{- define "objectflow.secretEnv" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "objectflow.secretName" (index . 0) }}
      key: {{ index . 2 }}
{{- end }}

{{- define "objectflow.dev.postgresql" -}}
{{- $config := include "objectflow.config" . | fromYaml -}}
container:
  env:
    - name: POSTGRES_DB
      value: {{ $config.DB_NAME }}
    - name: POSTGRES_USER
      value: {{ $config.DB_USER }}
    {{- include "objectflow.secretEnv" (list . "POSTGRES_PASSWORD" "DB_PASSWORD") | nindent 4 }}
    - name: PGDATA  # below the volume's root, which holds lost+found
      value: /var/lib/postgresql/data/pgdata
mounts:
  - name: run
    mountPath: /var/run/postgresql
volumes:
  - name: run
    emptyDir: {}
{{- end }}

{{- define "objectflow.dev.redis" -}}
container:
  command: [redis-server, --appendonly, "yes", --dir, /data]
{{- end }}

{{- define "objectflow.dev.rabbitmq" -}}
{{- $config := include "objectflow.config" . | fromYaml -}}
container:
  env:
    - name: RABBITMQ_DEFAULT_USER
      value: {{ $config.RABBITMQ_USER }}
    {{- include "objectflow.secretEnv" (list . "RABBITMQ_DEFAULT_PASS" "RABBITMQ_PASSWORD") | nindent 4 }}
    - name: RABBITMQ_DEFAULT_VHOST
      value: {{ $config.RABBITMQ_VHOST }}
# RabbitMQ 3.13 opens its upgrade log under /var/log/rabbitmq even when it logs to the console.
mounts:
  - name: log
    mountPath: /var/log/rabbitmq
volumes:
  - name: log
    emptyDir: {}
{{- end }}

{{/* KRaft, one node, formatted on first start; the cluster id is base64url("objectflow-kafka"). */}}
{{- define "objectflow.dev.kafka" -}}
container:
  command: [sh, -c]
  args:
    - >-
      /opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t b2JqZWN0Zmxvdy1rYWZrYQ
      -c /config/server.properties && exec /opt/kafka/bin/kafka-server-start.sh /config/server.properties
  env:
    - name: KAFKA_HEAP_OPTS
      value: -Xms256m -Xmx512m
    - name: LOG_DIR
      value: /tmp/kafka-logs
mounts:
  - name: config
    mountPath: /config
volumes:
  - name: config
    configMap:
      name: {{ include "objectflow.devHost" (list . "kafka") }}
{{- end }}

{{/* The password file is made from the Secret at start (mosquitto wants it as a file). */}}
{{- define "objectflow.dev.mosquitto" -}}
{{- $config := include "objectflow.config" . | fromYaml -}}
container:
  command: [mosquitto, -c, /mosquitto/config/mosquitto.conf]
initContainers:
  - name: passwords
    image: {{ index .Values "dev-services" "images" "mosquitto" }}
    command:
      - sh
      - -c
      - umask 077 && mosquitto_passwd -c -b /mosquitto/auth/passwd "$MQTT_USER" "$MQTT_PASSWORD"
    env:
      - name: MQTT_USER
        value: {{ $config.MQTT_USER }}
      {{- include "objectflow.secretEnv" (list . "MQTT_PASSWORD" "MQTT_PASSWORD") | nindent 6 }}
    securityContext:
      {{- include "objectflow.securityContext" 1883 | nindent 6 }}
    volumeMounts:
      - name: auth
        mountPath: /mosquitto/auth
mounts:
  - name: config
    mountPath: /mosquitto/config
  - name: auth
    mountPath: /mosquitto/auth
volumes:
  - name: config
    configMap:
      name: {{ include "objectflow.devHost" (list . "mosquitto") }}
  - name: auth
    emptyDir: {}
{{- end }}

{{/* MinIO notifies the minio-webhook adapter through the webhook target OBJECTFLOW (the id
`objectflow up` gives it), queueing in the volume while the adapter is unreachable. */}}
{{- define "objectflow.dev.minio" -}}
{{- $config := include "objectflow.config" . | fromYaml -}}
container:
  args: [server, /data, --console-address, ":9001"]
  env:
    - name: HOME
      value: /tmp
    - name: MINIO_ROOT_USER
      value: {{ $config.MINIO_ROOT_USER }}
    {{- include "objectflow.secretEnv" (list . "MINIO_ROOT_PASSWORD" "MINIO_ROOT_PASSWORD") | nindent 4 }}
    {{- if .Values.sources.minio.buckets }}
    - name: MINIO_NOTIFY_WEBHOOK_ENABLE_OBJECTFLOW
      value: "on"
    - name: MINIO_NOTIFY_WEBHOOK_ENDPOINT_OBJECTFLOW
      value: http://minio-webhook.{{ .Release.Namespace }}.svc.cluster.local/
    {{- include "objectflow.secretEnv" (list . "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_OBJECTFLOW" "MINIO_WEBHOOK_TOKEN") | nindent 4 }}
    - name: MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_OBJECTFLOW
      value: /data/.notify-queue
    {{- end }}
{{- end }}

{{/* FerretDB on PostgreSQL, as `objectflow up` runs it: the pg handler turns equality filters
(the outbox's `{status: ...}` scan) and updates by `_id` into SQL, where SQLite decodes the whole
collection (bench/README.md, detections). Its data lives in the dev PostgreSQL's database
`ferretdb`, which the init container creates (idempotently, once PostgreSQL answers); FerretDB's
/state keeps only its state file. */}}
{{- define "objectflow.dev.ferretdb" -}}
{{- $config := include "objectflow.config" . | fromYaml -}}
{{- $pg := printf "%s:%s" $config.DB_HOST $config.DB_PORT -}}
container:
  env:
    - name: FERRETDB_HANDLER
      value: postgresql
    {{- include "objectflow.secretEnv" (list . "DB_PASSWORD" "DB_PASSWORD") | nindent 4 }}
    - name: FERRETDB_POSTGRESQL_URL  # $(DB_PASSWORD): Kubernetes expands the entry above
      value: postgres://{{ $config.DB_USER }}:$(DB_PASSWORD)@{{ $pg }}/ferretdb
    - name: FERRETDB_STATE_DIR
      value: /state
    - name: FERRETDB_LISTEN_ADDR
      value: ":27017"
    - name: FERRETDB_TELEMETRY
      value: disable
initContainers:
  - name: database
    image: {{ index .Values "dev-services" "images" "postgresql" }}
    command: [sh, -ec]
    args:
      - |
        until pg_isready -q; do sleep 2; done
        psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'" | grep -q 1 \
          || psql -c "CREATE DATABASE ferretdb"
    env:
      - name: PGHOST
        value: {{ $config.DB_HOST }}
      - name: PGPORT
        value: {{ $config.DB_PORT | quote }}
      - name: PGUSER
        value: {{ $config.DB_USER }}
      - name: PGDATABASE
        value: {{ $config.DB_NAME }}
      {{- include "objectflow.secretEnv" (list . "PGPASSWORD" "DB_PASSWORD") | nindent 6 }}
    securityContext:
      {{- include "objectflow.securityContext" 999 | nindent 6 }}
{{- end }}
