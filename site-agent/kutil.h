/*
 * Small helpers the adapters share: Kubernetes-style quantities, GPU model
 * names normalized from vendor strings, DNS-safe job names derived from
 * stage ids, a safe string getter for nested JSON and token files.
 * Agent-internal.
 */
#ifndef MERIDIAN_AGENT_KUTIL_H
#define MERIDIAN_AGENT_KUTIL_H

#include <stddef.h>

#include <jansson.h>

/* "500m" -> 0.5, "64" -> 64, "1Gi" -> 1073741824, "1e3" -> 1000, also a
 * JSON number. MER_EPARSE for anything else. */
int mer_agent_quantity(const json_t *v, double *out);

/* A GPU model name for "gpu:<model>": "NVIDIA-A100-SXM4-80GB" -> "a100",
 * "Tesla-T4" -> "t4"; unknown strings are lower-cased and cut to
 * [a-z0-9._-]. Always NUL-terminates. */
void mer_agent_gpu_model(const char *product, char *out, size_t n);

/* A DNS-1123 label (<= 63) for a stage id: "mer-<cleaned>-<hash8>". */
void mer_agent_job_name(const char *stage_id, char *out, size_t n);

/* A token from a file (trailing newlines and blanks cut; at most 8 KiB)
 * into *out (malloc'd; free with mer_agent_free_token, which wipes it). */
int mer_agent_read_token(const char *path, char **out);
void mer_agent_free_token(char *tok);

/* json_string_value of the member at a path of keys (NULL-terminated
 * varargs), or NULL. */
const char *mer_agent_jstr(const json_t *v, ...);
/* The member at a path of keys, or NULL. */
json_t *mer_agent_jget(const json_t *v, ...);

#endif
