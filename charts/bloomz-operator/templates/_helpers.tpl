{{/* Names, labels and the operator settings file. */}}

{{- define "bloomz-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release + chart name, unless the release name already contains the chart name. */}}
{{- define "bloomz-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bloomz-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bloomz-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bloomz-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bloomz-operator.labels" -}}
helm.sh/chart: {{ include "bloomz-operator.chart" . }}
{{ include "bloomz-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "bloomz-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bloomz-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bloomz-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The operator's RBAC rules, generated from bloomz_operator.rbac by scripts/sync-chart.sh. */}}
{{- define "bloomz-operator.rules" -}}
{{- .Files.Get "files/rbac.yaml" | fromYaml | toJson }}
{{- end }}

{{/*
The operator settings file (contract: bloomz_operator.settings.load_settings). Empty image strings are
left out (the operator's built-in default applies); an empty memory / hugepages2Mi becomes null
("not requested").
*/}}
{{- define "bloomz-operator.settings" -}}
{{- $config := .Values.config }}
{{- $devices := dict }}
{{- range $device, $values := $config.devices }}
{{- $out := dict }}
{{- range $key, $value := $values }}
{{- if and (eq $key "image") (eq (toString $value) "") }}
{{- else if and (has $key (list "memory" "hugepages2Mi")) (eq (toString $value) "") }}
{{- $_ := set $out $key nil }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- $_ := set $devices $device $out }}
{{- end }}
{{- $settings := dict
  "namespaces" .Values.watchNamespaces
  "logLevel" $config.logLevel
  "livenessPort" $config.livenessPort
  "metricsPort" .Values.metrics.port
  "imagePullPolicy" $config.imagePullPolicy
  "imagePullSecrets" $config.imagePullSecrets
  "benchmark" $config.benchmark
  "devices" $devices }}
{{- toYaml $settings }}
{{- end }}
