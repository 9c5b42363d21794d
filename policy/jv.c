/*
 * Strict JSON member readers with field-naming errors for policy/'s
 * documents. They never guess: a wrong type or an unknown key is an error,
 * so a typo in a policy file cannot silently change placement.
 */
#include "policy/jv.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"

int mer_jv_fail(struct mer_jv *v, const char *path, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!v->err || v->errlen == 0)
		return MER_EINVAL;
	if (v->doc)
		mer_json_doc_errf(v->doc, path, v->err, v->errlen, "%s", msg);
	else if (path && path[0])
		snprintf(v->err, v->errlen, "%s: %s", path, msg);
	else
		snprintf(v->err, v->errlen, "%s", msg);
	return MER_EINVAL;
}

/* Appends s to out (n bytes) at *at, cutting it short when full. */
static void put(char *out, size_t n, size_t *at, const char *s)
{
	size_t k = strlen(s);

	if (*at + 1 >= n)
		return;
	if (k > n - 1 - *at)
		k = n - 1 - *at;
	memcpy(out + *at, s, k);
	*at += k;
	out[*at] = '\0';
}

/*
 * Paths are built for every member the validators read (so an error can
 * name it), thousands per submitted job: plain copies here, not snprintf,
 * which cost a tenth of the broker's time. A path cut short still points
 * near the fault.
 */
void mer_jv_key(char *out, size_t n, const char *parent, const char *key)
{
	int plain = key[0] != '\0' && !strpbrk(key, ".[]\"");
	size_t at = 0;

	if (!n)
		return;
	out[0] = '\0';
	put(out, n, &at, parent);
	if (plain) {
		if (parent[0])
			put(out, n, &at, ".");
		put(out, n, &at, key);
	} else {
		put(out, n, &at, "[\"");
		put(out, n, &at, key);
		put(out, n, &at, "\"]");
	}
}

void mer_jv_idx(char *out, size_t n, const char *parent, size_t i)
{
	char num[32], *p = num + sizeof(num);
	size_t at = 0;

	if (!n)
		return;
	*--p = '\0';
	*--p = ']';
	do {
		*--p = (char)('0' + i % 10);
		i /= 10;
	} while (i);
	*--p = '[';
	out[0] = '\0';
	put(out, n, &at, parent);
	put(out, n, &at, p);
}

int mer_jv_object(struct mer_jv *v, const json_t *val, const char *path,
		  const char *const *allowed)
{
	const char *key;
	json_t *m;

	if (!json_is_object(val))
		return mer_jv_fail(v, path, "must be an object");
	json_object_foreach ((json_t *)val, key, m) {
		int ok = 0;
		for (size_t i = 0; allowed && allowed[i]; i++) {
			if (strcmp(allowed[i], key) == 0) {
				ok = 1;
				break;
			}
		}
		if (!ok) {
			char p[MER_JV_PATH_MAX];
			mer_jv_key(p, sizeof(p), path, key);
			return mer_jv_fail(v, p, "unknown key");
		}
	}
	return 0;
}

static const char *type_name(json_type t)
{
	switch (t) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "true or false";
	case JSON_NULL:
		return "null";
	}
	return "?";
}

const json_t *mer_jv_member(struct mer_jv *v, const json_t *obj,
			    const char *path, const char *key, json_type type,
			    int required, int *rv)
{
	char p[MER_JV_PATH_MAX];
	const json_t *m = json_object_get(obj, key);

	*rv = 0;
	mer_jv_key(p, sizeof(p), path, key);
	if (!m) {
		if (required)
			*rv = mer_jv_fail(v, p, "required");
		return NULL;
	}
	if (json_typeof(m) != type) {
		*rv = mer_jv_fail(v, p, "must be %s", type_name(type));
		return NULL;
	}
	return m;
}

int mer_jv_str(struct mer_jv *v, const json_t *obj, const char *path,
	       const char *key, int required, const char **out)
{
	int rv;
	const json_t *m =
	    mer_jv_member(v, obj, path, key, JSON_STRING, required, &rv);

	if (!m)
		return rv;
	char *s = mer_arena_strdup(v->arena, json_string_value(m));
	if (!s)
		return MER_ENOMEM;
	*out = s;
	return 0;
}

int mer_jv_num(struct mer_jv *v, const json_t *obj, const char *path,
	       const char *key, int required, double lo, double hi, double *out)
{
	char p[MER_JV_PATH_MAX];
	const json_t *m = json_object_get(obj, key);

	mer_jv_key(p, sizeof(p), path, key);
	if (!m)
		return required ? mer_jv_fail(v, p, "required") : 0;
	if (!json_is_number(m))
		return mer_jv_fail(v, p, "must be a number");
	double d = json_number_value(m);
	if (!isfinite(d) || d < lo || d > hi) {
		if (lo == 0 && hi >= 1e300)
			return mer_jv_fail(v, p, "must be a number >= 0");
		if (hi >= 1e300)
			return mer_jv_fail(v, p, "must be a number >= %g", lo);
		return mer_jv_fail(v, p, "must be a number from %g to %g", lo,
				   hi);
	}
	*out = d;
	return 0;
}

int mer_jv_int(struct mer_jv *v, const json_t *obj, const char *path,
	       const char *key, int required, long long lo, long long hi,
	       long long *out)
{
	char p[MER_JV_PATH_MAX];
	const json_t *m = json_object_get(obj, key);

	mer_jv_key(p, sizeof(p), path, key);
	if (!m)
		return required ? mer_jv_fail(v, p, "required") : 0;
	long long x = json_is_integer(m) ? (long long)json_integer_value(m) : 0;
	if (!json_is_integer(m) || x < lo) {
		if (lo == 1)
			return mer_jv_fail(v, p, "must be a positive integer");
		if (lo == 0)
			return mer_jv_fail(v, p,
					   "must be a non-negative integer");
		return mer_jv_fail(v, p, "must be an integer from %lld to %lld",
				   lo, hi);
	}
	if (x > hi)
		return mer_jv_fail(v, p, "must be at most %lld", hi);
	*out = x;
	return 0;
}

int mer_jv_bool(struct mer_jv *v, const json_t *obj, const char *path,
		const char *key, int *out)
{
	char p[MER_JV_PATH_MAX];
	const json_t *m = json_object_get(obj, key);

	if (!m)
		return 0;
	if (!json_is_boolean(m)) {
		mer_jv_key(p, sizeof(p), path, key);
		return mer_jv_fail(v, p, "must be true or false");
	}
	*out = json_is_true(m);
	return 0;
}

int mer_jv_enum(struct mer_jv *v, const json_t *obj, const char *path,
		const char *key, int required, const char *const *names,
		size_t n, int *out)
{
	char p[MER_JV_PATH_MAX];
	char list[256] = "";
	int rv;
	const json_t *m =
	    mer_jv_member(v, obj, path, key, JSON_STRING, required, &rv);

	if (!m)
		return rv;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(json_string_value(m), names[i]) == 0) {
			*out = (int)i;
			return 0;
		}
	}
	for (size_t i = 0, o = 0; i < n && o < sizeof(list); i++) {
		int w = snprintf(list + o, sizeof(list) - o, "%s%s",
				 i ? ", " : "", names[i]);
		if (w < 0)
			break;
		o += (size_t)w;
	}
	mer_jv_key(p, sizeof(p), path, key);
	return mer_jv_fail(v, p, "must be one of %s (got \"%s\")", list,
			   json_string_value(m));
}

int mer_jv_strlist(struct mer_jv *v, const json_t *obj, const char *path,
		   const char *key, char ***out, size_t *n)
{
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	const json_t *m = mer_jv_member(v, obj, path, key, JSON_ARRAY, 0, &rv);

	if (!m)
		return rv;
	mer_jv_key(p, sizeof(p), path, key);
	size_t cnt = json_array_size(m);
	char **list =
	    mer_arena_alloc(v->arena, (cnt ? cnt : 1) * sizeof(*list));
	if (!list)
		return MER_ENOMEM;
	for (size_t i = 0; i < cnt; i++) {
		const json_t *e = json_array_get(m, i);
		mer_jv_idx(q, sizeof(q), p, i);
		if (!json_is_string(e) || json_string_length(e) == 0)
			return mer_jv_fail(v, q, "must be a non-empty string");
		for (size_t j = 0; j < i; j++) {
			if (strcmp(list[j], json_string_value(e)) == 0)
				return mer_jv_fail(v, q, "duplicate \"%s\"",
						   list[j]);
		}
		list[i] = mer_arena_strdup(v->arena, json_string_value(e));
		if (!list[i])
			return MER_ENOMEM;
	}
	*out = list;
	*n = cnt;
	return 0;
}

int mer_jv_name_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '-' || c == ':' || c == '/'))
			return 0;
	}
	return 1;
}

int mer_jv_parse_doc(const char *name, const char *text, size_t len,
		     mer_jv_build_fn build, void *out, char *err, size_t errlen)
{
	struct mer_json_doc doc = {0};
	int rv;

	rv = mer_json_doc_parse(name, text, len, 0, 0, &doc, err, errlen);
	if (rv)
		return rv;
	rv = build(doc.root, &doc, out, err, errlen);
	mer_json_doc_free(&doc);
	return rv;
}

int mer_jv_load_doc(const char *path, mer_jv_build_fn build, void *out,
		    char *err, size_t errlen)
{
	struct mer_json_doc doc = {0};
	int rv;

	rv = mer_json_doc_load(path, 0, 0, &doc, err, errlen);
	if (rv)
		return rv;
	rv = build(doc.root, &doc, out, err, errlen);
	mer_json_doc_free(&doc);
	return rv;
}

int mer_jv_abandon(struct mer_arena *arena, int rv, char *err, size_t errlen)
{
	if (rv == MER_ENOMEM && err && errlen)
		snprintf(err, errlen, "out of memory");
	mer_arena_free(arena);
	return rv;
}
