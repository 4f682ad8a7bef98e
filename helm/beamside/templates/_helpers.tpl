{{/* Names: every object is "<fullname>-<component>", from here only. */}}
{{- define "beamside.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- define "beamside.name" -}}
{{- printf "%s-%s" (include "beamside.fullname" .root) .component -}}
{{- end -}}

{{/* Labels: selectors use name, instance and component only (they never change on upgrade). */}}
{{- define "beamside.selector" -}}
app.kubernetes.io/name: beamside
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{- define "beamside.labels" -}}
{{ include "beamside.selector" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "beamside.image" -}}
{{ .name }}:{{ .tag }}
{{- end -}}

{{/* The hardened container securityContext of the chart's own pods. */}}
{{- define "beamside.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- define "beamside.podSecurity" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* Where the hub's configuration files appear in the hub and gateway containers. */}}
{{- define "beamside.configMounts" -}}
- {name: runtime, mountPath: /etc/beamside/runtime, readOnly: true}
- {name: secrets, mountPath: /etc/beamside/secrets, readOnly: true}
- {name: catalog, mountPath: /etc/beamside/catalog, readOnly: true}
{{- end -}}
{{- define "beamside.configVolumes" -}}
- name: runtime
  configMap: {name: {{ include "beamside.name" (dict "root" . "component" "hub") }}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret: {name: {{ include "beamside.name" (dict "root" . "component" "hub") }}}
      {{- if and (eq .Values.auth.type "oidc") .Values.auth.oidc.existing_secret }}
      - secret:
          name: {{ .Values.auth.oidc.existing_secret }}
          items: [{key: {{ .Values.auth.oidc.secret_key }}, path: oidc_client_secret}]
      {{- end }}
- name: catalog
  {{- with .Values.data.catalog }}
  {{- if .existing_config_map }}
  configMap: {name: {{ .existing_config_map }}, items: [{key: {{ .key }}, path: catalog.yaml}]}
  {{- else if .existing_secret }}
  secret: {secretName: {{ .existing_secret }}, items: [{key: {{ .key }}, path: catalog.yaml}]}
  {{- else }}
  configMap: {name: {{ include "beamside.name" (dict "root" $ "component" "catalog") }}}
  {{- end }}
  {{- end }}
{{- end -}}
{{- define "beamside.configEnv" -}}
- {name: BEAMSIDE_RUNTIME, value: /etc/beamside/runtime/runtime.json}
{{- end -}}

{{/* Restart pods whose configuration changed. */}}
{{- define "beamside.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/hub/configmap.yaml") . | sha256sum }}
checksum/catalog: {{ include (print .Template.BasePath "/hub/catalog.yaml") . | sha256sum }}
{{- end -}}

{{/* DNS only: the cluster's DNS pods, port 53. */}}
{{- define "beamside.dnsEgress" -}}
- ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
  to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
{{- end -}}
