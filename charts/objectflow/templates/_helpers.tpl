{{/*
Helpers shared by every template. values.yaml keys are kebab-case (the local runtime reads the
same file), hence `index` wherever a key has a dash.
*/}}

{{- define "objectflow.name" -}}
{{ .Chart.Name }}
{{- end }}

{{/* Prefix of the chart's own objects; wiring objects keep their values.yaml names. */}}
{{- define "objectflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{ .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else -}}
{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* (dict "root" $ "component" "function") */}}
{{- define "objectflow.labels" -}}
{{ include "objectflow.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: objectflow
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{- define "objectflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "objectflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* Labels of pods: what the NetworkPolicies select, plus the component. */}}
{{- define "objectflow.podLabels" -}}
{{ include "objectflow.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "objectflow.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "objectflow.configName" -}}
{{ include "objectflow.fullname" . }}-config
{{- end }}

{{- define "objectflow.secretName" -}}
{{ index .Values.secrets "existing-secret" | default (printf "%s-secrets" (include "objectflow.fullname" .)) }}
{{- end }}

{{- define "objectflow.devServices" -}}
{{- if (index .Values "dev-services" | default dict).enabled }}true{{ end }}
{{- end }}

{{/* Host of an in-cluster dev service: (list $ "postgresql") */}}
{{- define "objectflow.devHost" -}}
{{- $root := index . 0 -}}
{{ include "objectflow.fullname" $root }}-{{ index . 1 }}
{{- end }}

{{/* The plain settings of every workload: dev-service endpoints and the domains' bucket env
names, then `config` over them. */}}
{{- define "objectflow.config" -}}
{{- $config := dict -}}
{{- if include "objectflow.devServices" . -}}
{{- $_ := set $config "DB_HOST" (include "objectflow.devHost" (list . "postgresql")) -}}
{{- $_ := set $config "DB_PORT" "5432" -}}
{{- $_ := set $config "REDIS_HOST" (include "objectflow.devHost" (list . "redis")) -}}
{{- $_ := set $config "REDIS_PORT" "6379" -}}
{{- $_ := set $config "MINIO_ENDPOINT" (printf "http://%s:9000" (include "objectflow.devHost" (list . "minio"))) -}}
{{- $_ := set $config "RABBITMQ_HOST" (include "objectflow.devHost" (list . "rabbitmq")) -}}
{{- $_ := set $config "RABBITMQ_PORT" "5672" -}}
{{- $_ := set $config "MQTT_BROKER_URL" (printf "mqtt://%s:1883" (include "objectflow.devHost" (list . "mosquitto"))) -}}
{{- $_ := set $config "KAFKA_BOOTSTRAP_SERVERS" (include "objectflow.kafkaBootstrap" .) -}}
{{- end -}}
{{- range $domain := .Values.domains | default dict -}}
{{- range $env, $bucket := ($domain | default dict).buckets | default dict -}}
{{- $_ := set $config $env $bucket -}}
{{- end -}}
{{- end -}}
{{- with index (.Values.tracing | default dict) "otlp-endpoint" -}}
{{- $_ := set $config "OTEL_EXPORTER_OTLP_ENDPOINT" . -}}
{{- end -}}
{{- $merged := merge (deepCopy .Values.config) $config -}}
{{- /* In-cluster Kafka replaces config's default bootstrap (values.yaml names one, as the
Kafka sources need one to render). */ -}}
{{- if include "objectflow.devServices" . -}}
{{- $_ := set $merged "KAFKA_BOOTSTRAP_SERVERS" (include "objectflow.kafkaBootstrap" .) -}}
{{- end -}}
{{- toYaml $merged -}}
{{- end }}

{{/* Fully qualified: KafkaSource dispatchers run in knative-eventing, not in our namespace. */}}
{{- define "objectflow.kafkaBootstrap" -}}
{{ include "objectflow.devHost" (list . "kafka") }}.{{ .Release.Namespace }}.svc.cluster.local:9092
{{- end }}

{{/* defaults with the keys an override sets (null: keep the default), as YAML. `merge`
would ignore overrides to 0 or false. (list $defaults $override) */}}
{{- define "objectflow.override" -}}
{{- $merged := deepCopy (index . 0) -}}
{{- range $key, $value := index . 1 | default dict -}}
{{- if not (kindIs "invalid" $value) }}{{ $_ := set $merged $key $value }}{{ end -}}
{{- end -}}
{{- toYaml $merged -}}
{{- end }}

{{/* The broker's ingress (its status.address), where sources and CronJobs post events. */}}
{{- define "objectflow.brokerURL" -}}
{{- $ingress := eq .Values.broker.class "Kafka" | ternary "kafka-broker-ingress" "broker-ingress" -}}
http://{{ $ingress }}.knative-eventing.svc.cluster.local/{{ .Release.Namespace }}/{{ .Values.broker.name }}
{{- end }}

{{- define "objectflow.kafkaBrokerConfig" -}}
{{ include "objectflow.fullname" . }}-kafka-broker
{{- end }}

{{/* Names of the `ordered` triggers (a list), which only the Kafka broker class honours. */}}
{{- define "objectflow.orderedTriggers" -}}
{{- $names := list -}}
{{- range $fn := .Values.functions -}}
{{- range $fn.triggers -}}
{{- if .ordered }}{{ $names = append $names .name }}{{ end -}}
{{- end -}}
{{- end -}}
{{ toJson $names }}
{{- end }}

{{/* A SinkBinding: Knative injects K_SINK (the broker's address, kept current when transport
encryption or OIDC changes it) into the subject's pods. (dict "root" $ "name" ... "subject" {...}) */}}
{{- define "objectflow.sinkBinding" -}}
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "objectflow.labels" (dict "root" .root "component" "source") | nindent 4 }}
spec:
  subject:
    {{- toYaml .subject | nindent 4 }}
  {{- include "objectflow.sink" (dict "root" .root "function" .function) | nindent 2 }}
{{- end }}

{{/* S3 event names of a sources.minio bucket as `mc event add --event` takes them. */}}
{{- define "objectflow.mcEvents" -}}
{{- $events := list -}}
{{- range . -}}
{{- if hasPrefix "s3:ObjectCreated:" . }}{{ $events = append $events "put" }}{{ end -}}
{{- if hasPrefix "s3:ObjectRemoved:" . }}{{ $events = append $events "delete" }}{{ end -}}
{{- if hasPrefix "s3:ObjectAccessed:" . }}{{ $events = append $events "get" }}{{ end -}}
{{- end -}}
{{ uniq $events | join "," }}
{{- end }}

{{- define "objectflow.brokerSink" -}}
sink:
  ref:
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    name: {{ .Values.broker.name }}
{{- end }}

{{/* A source's sink: the function it names (its Knative Service), else the broker.
(dict "root" $ "function" name-or-nil) */}}
{{- define "objectflow.sink" -}}
{{- if .function -}}
{{- if not (hasKey .root.Values.functions .function) }}
{{- fail (printf "sink %s is not a key of functions" .function) }}
{{- end -}}
sink:
  ref:
    apiVersion: serving.knative.dev/v1
    kind: Service
    name: {{ .function }}
{{- else -}}
{{ include "objectflow.brokerSink" .root }}
{{- end -}}
{{- end }}

{{/* A function's `scaling` override with its `scale` (min, max, concurrency) mapped onto
min-scale, max-scale and container-concurrency, as YAML. */}}
{{- define "objectflow.functionScaling" -}}
{{- $scaling := deepCopy (.scaling | default dict) -}}
{{- $scale := .scale | default dict -}}
{{- range $from, $to := dict "min" "min-scale" "max" "max-scale" "concurrency" "container-concurrency" -}}
{{- if not (kindIs "invalid" (index $scale $from)) }}{{ $_ := set $scaling $to (index $scale $from) }}{{ end -}}
{{- end -}}
{{- toYaml $scaling -}}
{{- end }}

{{/* Every container: non-root, read-only root filesystem, no capabilities. The uid is the
image's user (10001 for ours, the upstream image's for dev services). */}}
{{- define "objectflow.securityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod-level settings of the chart's non-Knative pods (Knative only takes container-level). */}}
{{- define "objectflow.podSpec" -}}
serviceAccountName: {{ include "objectflow.fullname" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  runAsNonRoot: true
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "objectflow.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "objectflow.configName" . }}
  - secretRef:
      name: {{ include "objectflow.secretName" . }}
{{- end }}

{{/* The writable /tmp (HOME and TMPDIR of the image). */}}
{{- define "objectflow.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "objectflow.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end }}

{{/*
A Knative Service running one function of the image:
(dict "root" $ "name" ... "entrypoint" "path.py:target" "kind" "cloudevent|http" "public" bool
      "component" ... "scaling" override "resources" override "env" map)
`kind: http` targets are ASGI apps: FUNCTION_USE_ASGI is functions-framework's --asgi.
*/}}
{{- define "objectflow.knativeService" -}}
{{- $root := .root -}}
{{- $scaling := include "objectflow.override" (list $root.Values.scaling .scaling) | fromYaml -}}
{{- $minScale := index $scaling "min-scale" -}}
{{- if index $root.Values "live-update" }}{{ $minScale = max $minScale 1 }}{{ end -}}
{{- $entry := splitList ":" .entrypoint -}}
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "objectflow.labels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- if not .public }}
    networking.knative.dev/visibility: cluster-local
    {{- end }}
spec:
  template:
    metadata:
      labels:
        {{- include "objectflow.podLabels" (dict "root" $root "component" .component) | nindent 8 }}
      annotations:
        autoscaling.knative.dev/min-scale: {{ $minScale | quote }}
        autoscaling.knative.dev/max-scale: {{ index $scaling "max-scale" | quote }}
        checksum/config: {{ include "objectflow.config" $root | sha256sum }}
    spec:
      serviceAccountName: {{ include "objectflow.fullname" $root }}
      automountServiceAccountToken: false
      containerConcurrency: {{ index $scaling "container-concurrency" }}
      timeoutSeconds: {{ index $scaling "timeout-seconds" }}
      {{- if index $root.Values "live-update" }}
      initContainers:
        # File sync (skaffold, Tilt) writes here: a writable copy of the image's functions/.
        - name: copy-functions
          image: {{ include "objectflow.image" $root }}
          imagePullPolicy: {{ index $root.Values.image "pull-policy" }}
          command: [cp, -R, /app/functions/., /live/]
          securityContext:
            {{- include "objectflow.securityContext" 10001 | nindent 12 }}
          volumeMounts:
            - name: functions
              mountPath: /live
      {{- end }}
      containers:
        - name: function
          image: {{ include "objectflow.image" $root }}
          imagePullPolicy: {{ index $root.Values.image "pull-policy" }}
          ports:
            - containerPort: 8080
          env:
            - name: FUNCTION_SOURCE
              value: {{ index $entry 0 | quote }}
            - name: FUNCTION_TARGET
              value: {{ index $entry 1 | quote }}
            {{- if eq (.kind | default "cloudevent") "http" }}
            - name: FUNCTION_USE_ASGI
              value: "true"
            {{- end }}
            {{- if index $root.Values "live-update" }}
            - name: DEBUG  # functions-framework's reloading development server
              value: "true"
            {{- end }}
            {{- range $key, $value := .env }}
            - name: {{ $key }}
              value: {{ $value | quote }}
            {{- end }}
          {{- include "objectflow.envFrom" $root | nindent 10 }}
          readinessProbe:
            httpGet:
              path: /health
          livenessProbe:
            httpGet:
              path: /health
            periodSeconds: 10
            failureThreshold: 3
          resources:
            {{- toYaml (.resources | default $root.Values.resources) | nindent 12 }}
          securityContext:
            {{- include "objectflow.securityContext" 10001 | nindent 12 }}
          volumeMounts:
            {{- include "objectflow.tmpMount" . | nindent 12 }}
            {{- if index $root.Values "live-update" }}
            - name: functions
              mountPath: /app/functions
            {{- end }}
      volumes:
        {{- include "objectflow.tmpVolume" . | nindent 8 }}
        {{- if index $root.Values "live-update" }}
        - name: functions
          emptyDir: {}
        {{- end }}
{{- end }}
