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
left out (the operator's built-in default applies); an empty memory / hugepages2Mi (fixed per pod) or
memoryPerCard / hugepages2MiPerCard becomes null (not requested).
*/}}
{{- define "bloomz-operator.settings" -}}
{{- $config := .Values.config }}
{{- $devices := dict }}
{{- range $device, $values := $config.devices }}
{{- $out := dict }}
{{- range $key, $value := $values }}
{{- if and (eq $key "image") (eq (toString $value) "") }}
{{- else if and (has $key (list "memory" "hugepages2Mi" "memoryPerCard" "hugepages2MiPerCard")) (eq (toString $value) "") }}
{{- $_ := set $out $key nil }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- $_ := set $devices $device $out }}
{{- end }}
{{- $network := merge (dict "operatorNamespace" .Release.Namespace) (omit $config.network "monitoringNamespace") }}
{{- $_ := set $network "monitoringNamespace" ($config.network.monitoringNamespace | default nil) }}
{{- $settings := dict
  "namespaces" (include "bloomz-operator.watchNamespaces" . | fromJsonArray)
  "policy" $config.policy
  "network" $network
  "logLevel" $config.logLevel
  "livenessPort" $config.livenessPort
  "metricsPort" .Values.metrics.port
  "imagePullPolicy" $config.imagePullPolicy
  "imagePullSecrets" $config.imagePullSecrets
  "hubEndpoint" $config.hubEndpoint
  "benchmark" $config.benchmark
  "rollout" $config.rollout
  "devices" $devices }}
{{- toYaml $settings }}
{{- end }}

{{/*
The namespaces the operator watches, as a JSON list: [] means all namespaces (watchAllNamespaces, an
explicit choice); otherwise watchNamespaces, or the release namespace when that list is empty.
*/}}
{{- define "bloomz-operator.watchNamespaces" -}}
{{- if .Values.watchAllNamespaces }}
{{- if .Values.watchNamespaces }}
{{- fail "watchAllNamespaces: true and a watchNamespaces list exclude each other" }}
{{- end }}
{{- list | toJson }}
{{- else if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
The admission policy's CEL validations, one per rule of bloomz_operator.policy.violations (same values,
same decisions; tests/packaging evaluates them against the Python rules).
*/}}
{{- define "bloomz-operator.admissionValidations" -}}
{{- $policy := .Values.config.policy }}
{{- $noHostPath := "!has(object.spec.storage) || !has(object.spec.storage.hostPath)" }}
{{- if $policy.hostPathPrefixes }}
{{- $bases := list }}
{{- range $policy.hostPathPrefixes }}{{ $bases = append $bases (trimSuffix "/" .) }}{{ end }}
{{- $path := "object.spec.storage.hostPath.path" }}
- expression: {{ printf "%s || (!%s.matches('(^|/)[.][.](/|$)') && %s.exists(b, %s == b || %s.startsWith(b + '/')))" $noHostPath $path (toJson $bases) $path $path | toJson }}
  message: {{ printf "spec.storage.hostPath.path must be under one of %s (the operator's policy)" (join ", " $policy.hostPathPrefixes) | toJson }}
  reason: Forbidden
{{- else }}
- expression: {{ $noHostPath | toJson }}
  message: "spec.storage.hostPath is not allowed by the operator's policy (use a PVC)"
  reason: Forbidden
{{- end }}
{{- if $policy.allowedImagePrefixes }}
- expression: {{ printf "!has(object.spec.image) || %s.exists(p, object.spec.image.startsWith(p))" (toJson $policy.allowedImagePrefixes) | toJson }}
  message: {{ printf "spec.image must start with one of %s (the operator's policy)" (join ", " $policy.allowedImagePrefixes) | toJson }}
  reason: Forbidden
{{- end }}
{{- if kindIs "slice" $policy.allowedTolerationKeys }}
- expression: {{ printf "!has(object.spec.tolerations) || object.spec.tolerations.all(t, has(t.key) && t.key in %s)" (toJson $policy.allowedTolerationKeys) | toJson }}
  message: {{ printf "spec.tolerations may only use the keys %s (the operator's policy)" (join ", " $policy.allowedTolerationKeys) | toJson }}
  reason: Forbidden
{{- end }}
{{- if not $policy.allowEnvSecrets }}
- expression: "!has(object.spec.env) || object.spec.env.all(e, !has(e.valueFrom) || !has(e.valueFrom.secretKeyRef))"
  message: "spec.env may not read Secrets (the operator's policy)"
  reason: Forbidden
{{- end }}
{{- end }}
