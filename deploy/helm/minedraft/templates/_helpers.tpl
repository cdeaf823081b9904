{{/* Names and labels shared by every template. */}}
{{- define "minedraft.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component ("gateway", "target", "draft"); drafts add their kind. */}}
{{- define "minedraft.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .kind }}
minedraft.io/draft-kind: {{ . }}
{{- end }}
{{- end -}}

{{- define "minedraft.labels" -}}
{{ include "minedraft.selector" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "minedraft.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The headless Service of one draft kind: its A records are that kind's ready pods. */}}
{{- define "minedraft.draftService" -}}
{{ include "minedraft.fullname" .root }}-draft-{{ .kind }}
{{- end -}}

{{/* The gateway's --draft: every draft kind's headless Service, NAME:PORT each. */}}
{{- define "minedraft.draftEndpoints" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range (include "minedraft.drafts" . | fromYaml).items -}}
{{- if .enabled -}}
{{- $out = append $out (printf "%s:%d" (include "minedraft.draftService" (dict "root" $root "kind" .name)) (int $root.Values.ports.draft)) -}}
{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* Shared env: transport and host id. Same-node IPC gives every pod of a node one host id (the node's
     name), so `auto` may pick shm/cuda_ipc there; otherwise each pod is its own host and `inline` is used. */}}
{{- define "minedraft.env" -}}
- name: PYTHONUNBUFFERED
  value: "1"
- name: HF_HUB_OFFLINE
  value: "1"
- name: HF_HUB_CACHE
  value: /models/hub
{{- if .Values.sameNodeIPC.enabled }}
- name: MINEDRAFT_HOST_ID
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- else }}
- name: MINEDRAFT_HOST_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- end -}}

{{/* Native gRPC probes against grpc.health.v1 (service ""), the startup probe long enough for model
     loading. With "alive": "tcp" (the gateway) startup and liveness only ask that the port accepts: the
     gateway reports NOT_SERVING while its workers are away and recovers by itself, so that must take it
     out of the Service (readiness), never restart it. */}}
{{- define "minedraft.probes" -}}
{{- $alive := ternary (dict "tcpSocket" (dict "port" .port)) (dict "grpc" (dict "port" .port)) (eq (.alive | default "grpc") "tcp") -}}
startupProbe:
  {{- toYaml $alive | nindent 2 }}
  periodSeconds: {{ .probes.startup.periodSeconds }}
  failureThreshold: {{ .probes.startup.failureThreshold }}
  timeoutSeconds: {{ .probes.timeoutSeconds }}
readinessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: {{ .probes.readiness.periodSeconds }}
  failureThreshold: {{ .probes.readiness.failureThreshold }}
  timeoutSeconds: {{ .probes.timeoutSeconds }}
livenessProbe:
  {{- toYaml $alive | nindent 2 }}
  periodSeconds: {{ .probes.liveness.periodSeconds }}
  failureThreshold: {{ .probes.liveness.failureThreshold }}
  timeoutSeconds: {{ .probes.timeoutSeconds }}
{{- end -}}

{{/* A worker's volumes: /dev/shm as a memory-backed emptyDir (torch and the shm ring need more than the
     runtime's 64 MiB), except with sameNodeIPC, where the node's own /dev/shm (which hostIPC pods get) is
     what target and drafts share; and the models (a PVC, a hostPath, or none: the image's bundled pair).
     Called with (dict "root" $ "shmSizeLimit" QUANTITY); "mounts" true gives the container's mounts. */}}
{{- define "minedraft.volumes" -}}
{{- $v := .root.Values -}}
{{- $shm := not $v.sameNodeIPC.enabled -}}
{{- $models := ne $v.models.source "bundled" -}}
{{- if and .mounts (or $shm $models) }}
volumeMounts:
  {{- if $shm }}
  - name: dshm
    mountPath: /dev/shm
  {{- end }}
  {{- if $models }}
  - name: models
    mountPath: /models
    readOnly: true
  {{- end }}
{{- else if (or $shm $models) }}
volumes:
  {{- if $shm }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ .shmSizeLimit }}
  {{- end }}
  {{- if eq $v.models.source "pvc" }}
  - name: models
    persistentVolumeClaim:
      claimName: {{ $v.models.pvc.claimName }}
      readOnly: true
  {{- else if eq $v.models.source "hostPath" }}
  - name: models
    hostPath:
      path: {{ $v.models.hostPath.path }}
      type: Directory
  {{- end }}
{{- end }}
{{- end -}}

{{/* Host namespaces for same-node IPC: hostIPC for the shared /dev/shm and CUDA IPC handles; hostPID only
     where cuda_ipc may be used (the driver finds the exporting process by its PID). */}}
{{- define "minedraft.hostNamespaces" -}}
{{- if .Values.sameNodeIPC.enabled }}
hostIPC: true
{{- if ne .Values.transport "shm" }}
hostPID: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "minedraft.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  fsGroup: 10001
{{- end -}}

{{- define "minedraft.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* The draft kinds, each entry over draftDefaults, as YAML {items: [...]} (read with fromYaml). Set key by
     key, and inside a map-valued key (pdb, autoscaling, resources) key by key again, so that an entry's
     `false` wins (sprig's merge would let a default `true` overwrite it). */}}
{{- define "minedraft.drafts" -}}
{{- $items := list -}}
{{- range $entry := .Values.drafts -}}
{{- $d := deepCopy $.Values.draftDefaults -}}
{{- range $k, $v := $entry -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $d $k)) -}}
{{- $inner := deepCopy (get $d $k) -}}
{{- range $k2, $v2 := $v }}{{ $_ := set $inner $k2 $v2 }}{{ end -}}
{{- $_ := set $d $k $inner -}}
{{- else -}}
{{- $_ := set $d $k $v -}}
{{- end -}}
{{- end -}}
{{- $items = append $items $d -}}
{{- end -}}
{{- toYaml (dict "items" $items) -}}
{{- end -}}
