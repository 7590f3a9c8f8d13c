{{/* The chart's name, shortened to what a label value allows. */}}
{{- define "sluiceway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's resources' name: release and chart, unless overridden. */}}
{{- define "sluiceway.fullname" -}}
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

{{- define "sluiceway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on everything the chart creates. */}}
{{- define "sluiceway.labels" -}}
helm.sh/chart: {{ include "sluiceway.chart" . }}
{{ include "sluiceway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluiceway
{{- end }}

{{/* What the operator's Service and Deployment select its pod by. */}}
{{- define "sluiceway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluiceway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "sluiceway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluiceway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sluiceway.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{/* The image prefix of Pipelines without spec.image: pipelineImages.repository, else the
operator's repository without its -operator suffix; empty (no default) when it has none. */}}
{{- define "sluiceway.pipelineImageRepository" -}}
{{- if .Values.pipelineImages.repository }}
{{- .Values.pipelineImages.repository }}
{{- else if hasSuffix "-operator" .Values.operator.image.repository }}
{{- trimSuffix "-operator" .Values.operator.image.repository }}
{{- end }}
{{- end }}

{{/* Their tag: pipelineImages.tag, else the operator's (the chart's appVersion unless set). */}}
{{- define "sluiceway.pipelineImageTag" -}}
{{- .Values.pipelineImages.tag | default .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end }}
