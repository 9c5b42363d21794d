/*
 * Strict readers for the JSON documents of policy/ (jobs, site snapshots,
 * federations, policies): typed member access, unknown-key rejection and
 * errors that name the field ("stages[2].resources.gpu.count: must be a
 * positive integer"), prefixed with file:line:column when the source text
 * is known. Not a schema language: each document's loader calls these.
 */
#ifndef MERIDIAN_POLICY_JV_H
#define MERIDIAN_POLICY_JV_H

#include <stddef.h>
#include <jansson.h>

#include "common/json.h"
#include "policy/arena.h"

#define MER_JV_PATH_MAX 256

/* One validation pass: where errors go and where copies are allocated. */
struct mer_jv {
	const struct mer_json_doc *doc; /* NULL: errors are "path: message" */
	struct mer_arena *arena;
	char *err;
	size_t errlen;
};

/* Writes the error for path and returns MER_EINVAL. */
int mer_jv_fail(struct mer_jv *v, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Child paths: "parent.key" (or parent["k.y"] for awkward keys), and
 * "parent[i]". Always NUL-terminated. */
void mer_jv_key(char *out, size_t n, const char *parent, const char *key);
void mer_jv_idx(char *out, size_t n, const char *parent, size_t i);

/* val must be an object whose keys are all in allowed (NULL-terminated). */
int mer_jv_object(struct mer_jv *v, const json_t *val, const char *path,
		  const char *const *allowed);

/*
 * Member readers. Absent optional members leave *out untouched; absent
 * required ones, and wrong types or ranges, fail naming parent.key.
 */
int mer_jv_str(struct mer_jv *v, const json_t *obj, const char *path,
	       const char *key, int required, const char **out);
int mer_jv_num(struct mer_jv *v, const json_t *obj, const char *path,
	       const char *key, int required, double lo, double hi,
	       double *out);
int mer_jv_int(struct mer_jv *v, const json_t *obj, const char *path,
	       const char *key, int required, long long lo, long long hi,
	       long long *out);
int mer_jv_bool(struct mer_jv *v, const json_t *obj, const char *path,
		const char *key, int *out);
/* One of names[0..n-1]; *out gets the index. */
int mer_jv_enum(struct mer_jv *v, const json_t *obj, const char *path,
		const char *key, int required, const char *const *names,
		size_t n, int *out);
/* An array of non-empty strings (duplicates refused). */
int mer_jv_strlist(struct mer_jv *v, const json_t *obj, const char *path,
		   const char *key, char ***out, size_t *n);
/* The member if present and of the type (json_typeof), else NULL with an
 * error when present but of another type (*rv gets MER_EINVAL). */
const json_t *mer_jv_member(struct mer_jv *v, const json_t *obj,
			    const char *path, const char *key, json_type type,
			    int required, int *rv);

/* Valid names for sites, stages, datasets, regions: 1..63 characters of
 * [A-Za-z0-9._:/-]. */
int mer_jv_name_ok(const char *s);

/* A document's builder (mer_job_from_json and the like): out is the
 * caller's typed out-parameter (a struct mer_job ** ...), passed through. */
typedef int (*mer_jv_build_fn)(const json_t *root,
			       const struct mer_json_doc *doc, void *out,
			       char *err, size_t errlen);

/* The _parse and _load of each document: parse text (name labels errors)
 * or read the file at path, with common/json's default limits, and hand
 * the root to build, so its errors carry file:line:column. The parsed
 * text is freed either way; on a parse error build is not called and out
 * is left as it was (callers clear it first). */
int mer_jv_parse_doc(const char *name, const char *text, size_t len,
		     mer_jv_build_fn build, void *out, char *err,
		     size_t errlen);
int mer_jv_load_doc(const char *path, mer_jv_build_fn build, void *out,
		    char *err, size_t errlen);

/* The failure end of a builder: names MER_ENOMEM in err (other codes
 * wrote their own message), frees everything allocated in arena and
 * returns rv. */
int mer_jv_abandon(struct mer_arena *arena, int rv, char *err, size_t errlen);

#endif
