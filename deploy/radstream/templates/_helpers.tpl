{{/* Names and labels shared by every template. */}}
{{- define "radstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "radstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "radstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "radstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "radstream.selectorLabels" (list . "gateway") */}}
{{- define "radstream.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "radstream.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "radstream.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "radstream.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Service account name of a component: include "radstream.serviceAccountName" (list . "worker").
     RELEASE-COMPONENT whatever the release is called: the IRSA trust of the CloudFormation stack expects
     system:serviceaccount:NAMESPACE:ProjectName-COMPONENT, with the release named as ProjectName. */}}
{{- define "radstream.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $sa := index $root.Values.serviceAccounts $component -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" $root.Release.Name $component | trunc 63 | trimSuffix "-") $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "radstream.imageRef" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{- define "radstream.image" -}}
{{- $_ := required "image.repository is required" .Values.image.repository -}}
{{- if not .Values.image.digest -}}
{{- $_ := required "image.tag or image.digest is required" .Values.image.tag -}}
{{- end -}}
{{- include "radstream.imageRef" .Values.image -}}
{{- end -}}

{{- define "radstream.tritonGrpcUrl" -}}
{{- if .Values.triton.enabled -}}
{{- printf "%s-triton:%d" (include "radstream.fullname" .) (int .Values.triton.ports.grpc) -}}
{{- else -}}
{{- required "triton.grpcUrl is required when triton.enabled is false" .Values.triton.grpcUrl -}}
{{- end -}}
{{- end -}}

{{/* RADSTREAM_* environment shared by the gateway and the worker. */}}
{{- define "radstream.env" -}}
- name: RADSTREAM_ENVIRONMENT
  value: production
- name: RADSTREAM_AWS_ENDPOINT_URL
  value: {{ .Values.aws.endpointUrl | quote }}
- name: RADSTREAM_AWS_REGION
  value: {{ required "aws.region is required" .Values.aws.region | quote }}
- name: AWS_REGION
  value: {{ .Values.aws.region | quote }}
- name: RADSTREAM_IMAGES_BUCKET
  value: {{ required "aws.imagesBucket is required" .Values.aws.imagesBucket | quote }}
- name: RADSTREAM_RESULTS_BUCKET
  value: {{ required "aws.resultsBucket is required" .Values.aws.resultsBucket | quote }}
- name: RADSTREAM_DATALAKE_BUCKET
  value: {{ required "aws.datalakeBucket is required" .Values.aws.datalakeBucket | quote }}
- name: RADSTREAM_STATUS_TABLE
  value: {{ required "aws.statusTable is required" .Values.aws.statusTable | quote }}
- name: RADSTREAM_INFERENCE_QUEUE
  value: {{ required "aws.inferenceQueue is required" .Values.aws.inferenceQueue | quote }}
- name: RADSTREAM_TELEMETRY_STREAM
  value: {{ required "aws.telemetryStream is required" .Values.aws.telemetryStream | quote }}
- name: RADSTREAM_STATE_MACHINE_NAME
  value: {{ required "aws.stateMachineName is required" .Values.aws.stateMachineName | quote }}
- name: RADSTREAM_KMS_KEY_ID
  value: {{ required "aws.kmsKeyId is required" .Values.aws.kmsKeyId | quote }}
- name: RADSTREAM_TRITON_GRPC_URL
  value: {{ include "radstream.tritonGrpcUrl" . | quote }}
- name: RADSTREAM_STATE_DIR
  value: /tmp/radstream
- name: RADSTREAM_API_KEY_FILE
  value: /tmp/radstream/api-key
- name: TMPDIR
  value: /tmp
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "radstream.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "radstream.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* Egress every component needs: cluster DNS and HTTPS to AWS APIs (public or VPC endpoints). */}}
{{- define "radstream.egressDnsAndAws" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    - port: 443
      protocol: TCP
{{- end -}}
