/*
 * Table-driven config loading: defaults, then a JSON file's values checked
 * row by row, then validators, all into a scratch copy that replaces the
 * caller's struct only when everything passed. Not a schema language: nested
 * structures the table cannot describe are left to json rows and their
 * check_json callbacks.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "err.h"

#define MSG_LEN 512
#define NAME_MAX_LEN 256 /* of a row name, and of a path in messages */

/* ---- units ----------------------------------------------------------- */

struct unit {
	const char *name;
	int64_t mult;
};

/* Longest names first where one is a prefix of another ("ms" before "m"). */
static const struct unit duration_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
};

static const struct unit size_units[] = {
    {"KiB", 1LL << 10},	   {"MiB", 1LL << 20}, {"GiB", 1LL << 30},
    {"TiB", 1LL << 40},	   {"Ki", 1LL << 10},  {"Mi", 1LL << 20},
    {"Gi", 1LL << 30},	   {"Ti", 1LL << 40},  {"kB", 1000},
    {"KB", 1000},	   {"MB", 1000000},    {"GB", 1000000000},
    {"TB", 1000000000000}, {"B", 1},
};

/*
 * Reads "12" or "12.5" at *pp: the digits as one integer and how many of
 * them follow the point. Trailing zeros of the fraction are dropped so that
 * "1.50GiB" costs no more precision than "1.5GiB".
 */
static int parse_decimal(const char **pp, uint64_t *mant, int *scale)
{
	const char *p = *pp;
	uint64_t m = 0;
	int sc = 0, frac = 0, zeros = 0;

	for (;; p++) {
		if (*p == '.' && !frac) {
			frac = 1;
			continue;
		}
		if (*p < '0' || *p > '9')
			break;
		if (frac && *p == '0') {
			zeros++; /* held back until a non-zero digit */
			continue;
		}
		for (; zeros > 0; zeros--, sc++) {
			if (m > UINT64_MAX / 10)
				return MER_ETOOBIG;
			m *= 10;
		}
		if (m > (UINT64_MAX - 9) / 10)
			return MER_ETOOBIG;
		m = m * 10 + (uint64_t)(*p - '0');
		if (frac)
			sc++;
	}
	if (p == *pp || (p - *pp == 1 && frac) || p[-1] == '.')
		return MER_EINVAL;
	if (sc > 18)
		return MER_ETOOBIG;
	*pp = p;
	*mant = m;
	*scale = sc;
	return 0;
}

/* mant / 10^scale * mult, which must be whole and fit in int64. */
static int scale_value(uint64_t mant, int scale, int64_t mult, int64_t *out)
{
	unsigned __int128 v = (unsigned __int128)mant * (uint64_t)mult;
	unsigned __int128 p10 = 1;

	for (int i = 0; i < scale; i++)
		p10 *= 10;
	if (v % p10 != 0)
		return MER_EINVAL;
	v /= p10;
	if (v > INT64_MAX)
		return MER_ETOOBIG;
	*out = (int64_t)v;
	return 0;
}

static const struct unit *match_unit(const char **pp, const struct unit *u,
				     size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(u[i].name);
		if (strncmp(*pp, u[i].name, l) == 0) {
			*pp += l;
			return &u[i];
		}
	}
	return NULL;
}

int mer_cfg_parse_duration(const char *s, int64_t *ms)
{
	const char *p = s;
	int64_t total = 0;

	if (!s || !*s)
		return MER_EINVAL;
	while (*p) {
		const struct unit *u;
		uint64_t mant;
		int scale, rv;
		int64_t part;

		rv = parse_decimal(&p, &mant, &scale);
		if (rv)
			return rv;
		u = match_unit(&p, duration_units,
			       sizeof(duration_units) /
				   sizeof(duration_units[0]));
		if (!u)
			return MER_EINVAL;
		rv = scale_value(mant, scale, u->mult, &part);
		if (rv)
			return rv;
		if (__builtin_add_overflow(total, part, &total))
			return MER_ETOOBIG;
	}
	*ms = total;
	return 0;
}

int mer_cfg_parse_size(const char *s, int64_t *bytes)
{
	const char *p = s;
	const struct unit *u;
	uint64_t mant;
	int scale, rv;

	if (!s)
		return MER_EINVAL;
	rv = parse_decimal(&p, &mant, &scale);
	if (rv)
		return rv;
	while (*p == ' ')
		p++;
	if (*p == '\0') /* a bare number is bytes, as in JSON */
		return scale_value(mant, scale, 1, bytes);
	u = match_unit(&p, size_units,
		       sizeof(size_units) / sizeof(size_units[0]));
	if (!u || *p)
		return MER_EINVAL;
	return scale_value(mant, scale, u->mult, bytes);
}

void mer_cfg_format_duration(int64_t ms, char *out, size_t n)
{
	size_t off = 0;

	if (n == 0)
		return;
	out[0] = '\0';
	if (ms == 0) {
		snprintf(out, n, "0s");
		return;
	}
	if (ms < 0) {
		snprintf(out, n, "%" PRId64 "ms", ms);
		return;
	}
	for (int i = 4; i >= 0 && ms > 0; i--) {
		int64_t q = ms / duration_units[i].mult;
		int w;
		if (q == 0)
			continue;
		ms -= q * duration_units[i].mult;
		w = snprintf(out + off, n - off, "%" PRId64 "%s", q,
			     duration_units[i].name);
		if (w < 0 || (size_t)w >= n - off)
			return;
		off += (size_t)w;
	}
}

void mer_cfg_format_size(int64_t bytes, char *out, size_t n)
{
	/* Binary units first: sizes in configs are mostly memory and
	 * buffers. Only the canonical names are written. */
	static const int order[] = {3, 2, 1, 0, 12, 11, 10, 8};

	if (n == 0)
		return;
	for (size_t i = 0; bytes > 0 && i < sizeof(order) / sizeof(order[0]);
	     i++) {
		const struct unit *u = &size_units[order[i]];
		if (bytes % u->mult == 0) {
			snprintf(out, n, "%" PRId64 "%s", bytes / u->mult,
				 u->name);
			return;
		}
	}
	snprintf(out, n, "%" PRId64 "B", bytes);
}

void mer_strlist_free(struct mer_strlist *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* ---- fields ---------------------------------------------------------- */

static void *field(void *cfg, const struct mer_cfg_row *r)
{
	return (char *)cfg + r->offset;
}

static const void *cfield(const void *cfg, const struct mer_cfg_row *r)
{
	return (const char *)cfg + r->offset;
}

static size_t field_size(enum mer_cfg_type type)
{
	switch (type) {
	case MER_CFG_BOOL:
		return sizeof(bool);
	case MER_CFG_INT64:
	case MER_CFG_DURATION:
	case MER_CFG_SIZE:
		return sizeof(int64_t);
	case MER_CFG_DOUBLE:
		return sizeof(double);
	case MER_CFG_STRING:
	case MER_CFG_PATH:
		return sizeof(char *);
	case MER_CFG_ENUM:
		return sizeof(int);
	case MER_CFG_STRLIST:
		return sizeof(struct mer_strlist);
	case MER_CFG_JSON:
		return sizeof(json_t *);
	}
	return 0;
}

/* Sets a field to its empty value without freeing what it held (that
 * belongs to the caller's copy of the struct). */
static void field_clear(void *cfg, const struct mer_cfg_row *r)
{
	void *f = field(cfg, r);

	switch (r->type) {
	case MER_CFG_BOOL:
		*(bool *)f = false;
		break;
	case MER_CFG_INT64:
	case MER_CFG_DURATION:
	case MER_CFG_SIZE:
		*(int64_t *)f = 0;
		break;
	case MER_CFG_DOUBLE:
		*(double *)f = 0.0;
		break;
	case MER_CFG_STRING:
	case MER_CFG_PATH:
		*(char **)f = NULL;
		break;
	case MER_CFG_ENUM:
		*(int *)f = 0;
		break;
	case MER_CFG_STRLIST:
		((struct mer_strlist *)f)->v = NULL;
		((struct mer_strlist *)f)->n = 0;
		break;
	case MER_CFG_JSON:
		*(json_t **)f = NULL;
		break;
	}
}

static void wipe(char *s)
{
	if (s)
		sodium_memzero(s, strlen(s));
}

/* Secret strings are wiped before they go back to the allocator. (The
 * copies jansson made while parsing are not: a known limit.) */
static void free_string(const struct mer_cfg_row *r, char *s)
{
	if (r->flags & MER_CFG_SECRET)
		wipe(s);
	free(s);
}

static void free_list(const struct mer_cfg_row *r, struct mer_strlist *l)
{
	if (r->flags & MER_CFG_SECRET)
		for (size_t i = 0; i < l->n; i++)
			wipe(l->v[i]);
	mer_strlist_free(l);
}

static void field_free(void *cfg, const struct mer_cfg_row *r)
{
	void *f = field(cfg, r);

	switch (r->type) {
	case MER_CFG_STRING:
	case MER_CFG_PATH:
		free_string(r, *(char **)f);
		*(char **)f = NULL;
		break;
	case MER_CFG_STRLIST:
		free_list(r, f);
		break;
	case MER_CFG_JSON:
		json_decref(*(json_t **)f);
		*(json_t **)f = NULL;
		break;
	case MER_CFG_BOOL:
	case MER_CFG_INT64:
	case MER_CFG_DURATION:
	case MER_CFG_SIZE:
	case MER_CFG_DOUBLE:
	case MER_CFG_ENUM:
		break;
	}
}

void mer_cfg_free(const struct mer_cfg_table *t, void *cfg)
{
	if (!t || !cfg)
		return;
	for (size_t i = 0; i < t->nrows; i++)
		field_free(cfg, &t->rows[i]);
}

/* ---- messages -------------------------------------------------------- */

static void append(char *buf, size_t n, size_t *off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void append(char *buf, size_t n, size_t *off, const char *fmt, ...)
{
	va_list ap;
	int w;

	if (*off >= n - 1)
		return;
	va_start(ap, fmt);
	w = vsnprintf(buf + *off, n - *off, fmt, ap);
	va_end(ap);
	if (w > 0)
		*off += (size_t)w < n - *off ? (size_t)w : n - 1 - *off;
}

/*
 * A user's string as it appears in a message: quoted, cut at 60 bytes,
 * control characters escaped, so that a hostile value cannot forge lines.
 */
static const char *quoted(const char *s, char *out, size_t n)
{
	size_t off = 0, k = 0;

	append(out, n, &off, "'");
	for (; s[k] && k < 60; k++) {
		unsigned char c = (unsigned char)s[k];
		if (c < ' ' || c == 0x7f || c == '\'' || c == '\\')
			append(out, n, &off, "\\x%02x", c);
		else
			append(out, n, &off, "%c", c);
	}
	append(out, n, &off, s[k] ? "'..." : "'");
	return out;
}

/* A value as a message may show it: never for secret rows. */
static const char *shown(const struct mer_cfg_row *r, const char *s, char *out,
			 size_t n)
{
	if (r->flags & MER_CFG_SECRET) {
		snprintf(out, n, "the value");
		return out;
	}
	return quoted(s, out, n);
}

struct load {
	const struct mer_cfg_table *t;
	const struct mer_json_doc *doc; /* NULL while applying defaults */
	void *cfg;			/* the scratch copy */
	char *err;
	size_t errlen;
};

/*
 * Reports a problem with the value at path: with the file's position, or
 * as a bug in the table while defaults are being applied.
 */
static int fail(struct load *L, const char *path, int at_key, const char *fmt,
		...) __attribute__((format(printf, 4, 5)));

static int fail(struct load *L, const char *path, int at_key, const char *fmt,
		...)
{
	char msg[MSG_LEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!L->err || L->errlen == 0)
		return MER_EINVAL;
	if (!L->doc)
		snprintf(L->err, L->errlen, "config table: %s: bad default: %s",
			 path, msg);
	else if (at_key)
		mer_json_doc_key_errf(L->doc, path, L->err, L->errlen, "%s",
				      msg);
	else
		mer_json_doc_errf(L->doc, path, L->err, L->errlen, "%s", msg);
	return MER_EINVAL;
}

static int fail_table(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_table(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	size_t off = 0;

	if (err && errlen) {
		append(err, errlen, &off, "config table: ");
		va_start(ap, fmt);
		vsnprintf(err + off, errlen - off, fmt, ap);
		va_end(ap);
	}
	return MER_EINVAL;
}

static int fail_nomem(struct load *L)
{
	if (L->err && L->errlen)
		snprintf(L->err, L->errlen, "%s: out of memory",
			 L->doc && L->doc->name ? L->doc->name : "config");
	return MER_ENOMEM;
}

/* ---- converting values ----------------------------------------------- */

static int check_int_range(struct load *L, const struct mer_cfg_row *r,
			   int64_t v)
{
	char a[48], b[48];

	if (r->min == 0 && r->max == 0)
		return 0;
	if (v >= r->min && v <= r->max)
		return 0;
	switch (r->type) {
	case MER_CFG_DURATION:
		mer_cfg_format_duration(v, a, sizeof(a));
		mer_cfg_format_duration(v < r->min ? r->min : r->max, b,
					sizeof(b));
		break;
	case MER_CFG_SIZE:
		mer_cfg_format_size(v, a, sizeof(a));
		mer_cfg_format_size(v < r->min ? r->min : r->max, b, sizeof(b));
		break;
	default:
		snprintf(a, sizeof(a), "%" PRId64, v);
		snprintf(b, sizeof(b), "%" PRId64,
			 v < r->min ? r->min : r->max);
		break;
	}
	if (v < r->min)
		return fail(L, r->name, 0, "%s is too small (minimum %s)", a,
			    b);
	return fail(L, r->name, 0, "%s is too large (maximum %s)", a, b);
}

static int check_length(struct load *L, const char *path,
			const struct mer_cfg_row *r, size_t len,
			const char *what)
{
	if (len == 0 && r->min > 0)
		return fail(L, path, 0, "must not be empty");
	if (r->min > 0 && len < (uint64_t)r->min)
		return fail(L, path, 0,
			    "has %zu %s, fewer than the minimum of %" PRId64,
			    len, what, r->min);
	if (r->max > 0 && len > (uint64_t)r->max)
		return fail(L, path, 0,
			    "has %zu %s, more than the maximum of %" PRId64,
			    len, what, r->max);
	return 0;
}

static int set_duration(struct load *L, const struct mer_cfg_row *r,
			const json_t *v, int64_t *out)
{
	char q[96];
	int64_t ms;

	if (json_is_string(v)) {
		int rv = mer_cfg_parse_duration(json_string_value(v), &ms);
		shown(r, json_string_value(v), q, sizeof(q));
		if (rv == MER_ETOOBIG)
			return fail(L, r->name, 0, "%s is too long a duration",
				    q);
		if (rv)
			return fail(L, r->name, 0,
				    "%s is not a duration (use a number of "
				    "seconds, or a string such as \"250ms\", "
				    "\"30s\", \"5m\", \"1h\", \"1h30m\")",
				    q);
	} else if (json_is_number(v)) {
		double s = json_number_value(v), m = s * 1000.0;
		if (s < 0)
			return fail(L, r->name, 0,
				    "a duration must not be negative");
		if (m >= 9.2e18)
			return fail(L, r->name, 0, "%g seconds is too long", s);
		ms = (int64_t)llround(m);
		if (fabs(m - (double)ms) > 1e-6 * (m > 1 ? m : 1))
			return fail(L, r->name, 0,
				    "%g seconds is not a whole number of "
				    "milliseconds",
				    s);
	} else {
		return fail(L, r->name, 0, "expected a duration, got %s",
			    mer_json_type_name(v));
	}
	if (ms < 0)
		return fail(L, r->name, 0, "a duration must not be negative");
	*out = ms;
	return check_int_range(L, r, ms);
}

static int set_size(struct load *L, const struct mer_cfg_row *r,
		    const json_t *v, int64_t *out)
{
	char q[96];
	int64_t b;

	if (json_is_string(v)) {
		int rv = mer_cfg_parse_size(json_string_value(v), &b);
		shown(r, json_string_value(v), q, sizeof(q));
		if (rv == MER_ETOOBIG)
			return fail(L, r->name, 0, "%s is too large a size", q);
		if (rv)
			return fail(L, r->name, 0,
				    "%s is not a size (use a number of bytes, "
				    "or a number with a unit: B, KiB, MiB, "
				    "GiB, TiB, kB, MB, GB, TB)",
				    q);
	} else if (json_is_integer(v)) {
		b = json_integer_value(v);
	} else if (json_is_real(v) && json_real_value(v) >= 0 &&
		   json_real_value(v) < 9.2e18 &&
		   json_real_value(v) == floor(json_real_value(v))) {
		b = (int64_t)json_real_value(v);
	} else {
		return fail(L, r->name, 0,
			    "expected a size (a whole number of bytes or a "
			    "string such as \"4MiB\"), got %s",
			    mer_json_type_name(v));
	}
	if (b < 0)
		return fail(L, r->name, 0, "a size must not be negative");
	*out = b;
	return check_int_range(L, r, b);
}

static int set_enum(struct load *L, const struct mer_cfg_row *r,
		    const json_t *v, int *out)
{
	char list[MSG_LEN], q[96];
	size_t off = 0;

	if (!json_is_string(v))
		return fail(L, r->name, 0,
			    "expected one of the names below, "
			    "got %s",
			    mer_json_type_name(v));
	for (const struct mer_cfg_enum *e = r->enums; e && e->name; e++) {
		if (strcmp(e->name, json_string_value(v)) == 0) {
			*out = e->value;
			return 0;
		}
		append(list, sizeof(list), &off, "%s%s", off ? ", " : "",
		       e->name);
	}
	return fail(L, r->name, 0, "%s is not one of: %s",
		    shown(r, json_string_value(v), q, sizeof(q)), list);
}

static int set_string(struct load *L, const struct mer_cfg_row *r,
		      const json_t *v, char **out)
{
	char *s;
	int rv;

	if (!json_is_string(v))
		return fail(L, r->name, 0, "expected a string, got %s",
			    mer_json_type_name(v));
	rv = check_length(L, r->name, r, json_string_length(v), "bytes");
	if (rv)
		return rv;
	s = strdup(json_string_value(v));
	if (!s)
		return fail_nomem(L);
	free_string(r, *out);
	*out = s;
	return 0;
}

static int set_strlist(struct load *L, const struct mer_cfg_row *r,
		       const json_t *v, struct mer_strlist *out)
{
	struct mer_strlist l = {NULL, 0};
	char path[NAME_MAX_LEN + 32];
	size_t n, i;
	json_t *e;
	int rv;

	if (!json_is_array(v))
		return fail(L, r->name, 0,
			    "expected an array of strings, got %s",
			    mer_json_type_name(v));
	n = json_array_size(v);
	rv = check_length(L, r->name, r, n, "entries");
	if (rv)
		return rv;
	if (n) {
		l.v = calloc(n, sizeof(*l.v));
		if (!l.v)
			return fail_nomem(L);
	}
	json_array_foreach(v, i, e)
	{
		snprintf(path, sizeof(path), "%s[%zu]", r->name, i);
		if (!json_is_string(e)) {
			rv = fail(L, path, 0, "expected a string, got %s",
				  mer_json_type_name(e));
			goto out_free_list;
		}
		/* An empty entry (an endpoint, a label) is never meant. */
		if (json_string_length(e) == 0) {
			rv = fail(L, path, 0, "must not be empty");
			goto out_free_list;
		}
		l.v[i] = strdup(json_string_value(e));
		if (!l.v[i]) {
			rv = fail_nomem(L);
			goto out_free_list;
		}
		l.n = i + 1;
	}
	field_free(L->cfg, r);
	*out = l;
	return 0;

out_free_list:
	free_list(r, &l);
	return rv;
}

static int set_json(struct load *L, const struct mer_cfg_row *r,
		    const json_t *v, json_t **out)
{
	if ((r->flags & MER_CFG_JSON_OBJECT) && !json_is_object(v))
		return fail(L, r->name, 0, "expected an object, got %s",
			    mer_json_type_name(v));
	if ((r->flags & MER_CFG_JSON_ARRAY) && !json_is_array(v))
		return fail(L, r->name, 0, "expected an array, got %s",
			    mer_json_type_name(v));
	if (!json_is_object(v) && !json_is_array(v))
		return fail(L, r->name, 0,
			    "expected an object or an array, got %s",
			    mer_json_type_name(v));
	json_decref(*out);
	*out = json_incref((json_t *)v);
	return 0;
}

/* Converts v (from the file or a default) into the row's field. */
static int set_value(struct load *L, const struct mer_cfg_row *r,
		     const json_t *v)
{
	void *f = field(L->cfg, r);

	switch (r->type) {
	case MER_CFG_BOOL:
		if (!json_is_boolean(v))
			return fail(L, r->name, 0,
				    "expected true or false, got %s",
				    mer_json_type_name(v));
		*(bool *)f = json_is_true(v);
		return 0;
	case MER_CFG_INT64:
		if (!json_is_integer(v))
			return fail(L, r->name, 0,
				    "expected an integer, got %s",
				    mer_json_type_name(v));
		*(int64_t *)f = json_integer_value(v);
		return check_int_range(L, r, json_integer_value(v));
	case MER_CFG_DOUBLE: {
		double d;
		if (!json_is_number(v))
			return fail(L, r->name, 0, "expected a number, got %s",
				    mer_json_type_name(v));
		d = json_number_value(v);
		*(double *)f = d;
		if (r->dmin == 0 && r->dmax == 0)
			return 0;
		if (d < r->dmin)
			return fail(L, r->name, 0,
				    "%g is too small (minimum %g)", d, r->dmin);
		if (d > r->dmax)
			return fail(L, r->name, 0,
				    "%g is too large (maximum %g)", d, r->dmax);
		return 0;
	}
	case MER_CFG_STRING:
	case MER_CFG_PATH:
		return set_string(L, r, v, f);
	case MER_CFG_ENUM:
		return set_enum(L, r, v, f);
	case MER_CFG_STRLIST:
		return set_strlist(L, r, v, f);
	case MER_CFG_DURATION:
		return set_duration(L, r, v, f);
	case MER_CFG_SIZE:
		return set_size(L, r, v, f);
	case MER_CFG_JSON:
		return set_json(L, r, v, f);
	}
	return fail(L, r->name, 0, "unknown row type %d", (int)r->type);
}

/* The default as JSON: strings verbatim for string-like rows, otherwise
 * JSON text, falling back to a string ("30s" is not JSON). */
static json_t *default_value(const struct mer_cfg_row *r)
{
	json_t *v;

	if (r->type == MER_CFG_STRING || r->type == MER_CFG_PATH ||
	    r->type == MER_CFG_ENUM)
		return json_string(r->def);
	v = json_loads(r->def, JSON_DECODE_ANY, NULL);
	if (!v && (r->type == MER_CFG_DURATION || r->type == MER_CFG_SIZE))
		v = json_string(r->def);
	return v;
}

static int apply_defaults(struct load *L)
{
	for (size_t i = 0; i < L->t->nrows; i++) {
		const struct mer_cfg_row *r = &L->t->rows[i];
		json_t *v;
		int rv;

		if (!r->def)
			continue;
		v = default_value(r);
		if (!v)
			return fail(L, r->name, 0, "%s is not valid JSON",
				    r->def);
		rv = set_value(L, r, v);
		json_decref(v);
		if (rv)
			return rv;
	}
	return 0;
}

/* ---- the table ------------------------------------------------------- */

static int name_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* True when some row's name is prefix + "." + something. */
static int is_level(const struct mer_cfg_table *t, const char *prefix,
		    size_t plen)
{
	for (size_t i = 0; i < t->nrows; i++) {
		const char *n = t->rows[i].name;
		if (plen == 0 ||
		    (strncmp(n, prefix, plen) == 0 && n[plen] == '.'))
			return 1;
	}
	return 0;
}

static const struct mer_cfg_row *find_row(const struct mer_cfg_table *t,
					  const char *name)
{
	for (size_t i = 0; i < t->nrows; i++)
		if (strcmp(t->rows[i].name, name) == 0)
			return &t->rows[i];
	return NULL;
}

static int check_row(const struct mer_cfg_table *t, const struct mer_cfg_row *r,
		     char *err, size_t errlen)
{
	const char *n = r->name;
	size_t len;

	if (!n || !*n)
		return fail_table(err, errlen, "a row has no name");
	len = strlen(n);
	if (len >= NAME_MAX_LEN)
		return fail_table(err, errlen, "%.40s...: name too long", n);
	for (size_t k = 0; k < len; k++) {
		if (n[k] == '.' ? (k == 0 || k == len - 1 || n[k + 1] == '.')
				: !name_char_ok(n[k]))
			return fail_table(err, errlen,
					  "%s: names are words made of "
					  "[A-Za-z0-9_-] joined by '.'",
					  n);
	}
	if (field_size(r->type) == 0)
		return fail_table(err, errlen, "%s: unknown type %d", n,
				  (int)r->type);
	if (r->offset + field_size(r->type) > t->size)
		return fail_table(err, errlen,
				  "%s: offset %zu outside the %zu "
				  "byte struct",
				  n, r->offset, t->size);
	if (find_row(t, n) != r)
		return fail_table(err, errlen, "%s: two rows of that name", n);
	if (is_level(t, n, len))
		return fail_table(err, errlen,
				  "%s: is both a setting and a section", n);
	if ((r->flags & MER_CFG_REQUIRED) && r->def)
		return fail_table(err, errlen,
				  "%s: a required row has no default", n);
	if ((r->flags & MER_CFG_JSON_OBJECT) && (r->flags & MER_CFG_JSON_ARRAY))
		return fail_table(err, errlen,
				  "%s: json rows are an object or an array, "
				  "not both",
				  n);
	if (r->type == MER_CFG_ENUM && (!r->enums || !r->enums[0].name))
		return fail_table(err, errlen, "%s: enum row without values",
				  n);
	switch (r->type) {
	case MER_CFG_INT64:
	case MER_CFG_DURATION:
	case MER_CFG_SIZE:
		if (r->min > r->max)
			return fail_table(err, errlen, "%s: min above max", n);
		break;
	case MER_CFG_STRING:
	case MER_CFG_PATH:
	case MER_CFG_STRLIST:
		if (r->min < 0 || r->max < 0 || (r->max && r->min > r->max))
			return fail_table(err, errlen, "%s: bad length bounds",
					  n);
		break;
	case MER_CFG_DOUBLE:
		if (!(r->dmin <= r->dmax))
			return fail_table(err, errlen, "%s: dmin above dmax",
					  n);
		break;
	case MER_CFG_BOOL:
	case MER_CFG_ENUM:
	case MER_CFG_JSON:
		break;
	}
	return 0;
}

static int table_check(const struct mer_cfg_table *t, char *err, size_t errlen)
{
	if (!t || (!t->rows && t->nrows) || t->size == 0)
		return fail_table(err, errlen, "no table");
	for (size_t i = 0; i < t->nrows; i++) {
		int rv = check_row(t, &t->rows[i], err, errlen);
		if (rv)
			return rv;
	}
	return 0;
}

/* ---- unknown keys ---------------------------------------------------- */

/* Edit distance with adjacent swaps, for "did you mean". */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t d[3][33];

	if (la > 32 || lb > 32)
		return SIZE_MAX;
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t *cur = d[i % 3], *prev = d[(i - 1) % 3];
		size_t *prev2 = d[(i + 1) % 3];
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t cost = a[i - 1] != b[j - 1];
			size_t v = prev[j] + 1;
			if (cur[j - 1] + 1 < v)
				v = cur[j - 1] + 1;
			if (prev[j - 1] + cost < v)
				v = prev[j - 1] + cost;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] &&
			    a[i - 2] == b[j - 1] && prev2[j - 2] + 1 < v)
				v = prev2[j - 2] + 1;
			cur[j] = v;
		}
	}
	return d[la % 3][lb];
}

/* The keys a level allows: the next word of each row under prefix. */
static size_t level_keys(const struct mer_cfg_table *t, const char *prefix,
			 size_t plen, const char **keys, size_t *klens,
			 size_t max)
{
	size_t n = 0;

	for (size_t i = 0; i < t->nrows; i++) {
		const char *k = t->rows[i].name, *dot;
		size_t kl;
		int dup = 0;
		if (plen) {
			if (strncmp(k, prefix, plen) != 0 || k[plen] != '.')
				continue;
			k += plen + 1;
		}
		dot = strchr(k, '.');
		kl = dot ? (size_t)(dot - k) : strlen(k);
		for (size_t j = 0; j < n; j++)
			if (klens[j] == kl && strncmp(keys[j], k, kl) == 0)
				dup = 1;
		if (!dup && n < max) {
			keys[n] = k;
			klens[n++] = kl;
		}
	}
	return n;
}

static int unknown_key(struct load *L, const char *prefix, size_t plen,
		       const char *key, const char *path)
{
	const char *keys[64];
	size_t klens[64], n, best = SIZE_MAX, bi = 0, off = 0;
	char q[96], hint[MSG_LEN] = "", word[NAME_MAX_LEN];

	n = level_keys(L->t, prefix, plen, keys, klens, 64);
	snprintf(word, sizeof(word), "%.*s%s%s", (int)plen, prefix,
		 plen ? "." : "", key);
	if (strchr(key, '.') &&
	    (find_row(L->t, word) || is_level(L->t, word, strlen(word)))) {
		/* "etcd.timeout": 5 is a common slip for the nested form. */
		snprintf(hint, sizeof(hint),
			 " (names are not dotted in files: write nested "
			 "objects)");
	} else {
		for (size_t i = 0; i < n; i++) {
			size_t dist;
			snprintf(word, sizeof(word), "%.*s", (int)klens[i],
				 keys[i]);
			dist = edit_distance(key, word);
			if (dist < best) {
				best = dist;
				bi = i;
			}
		}
		if (best <= 2 && best < strlen(key))
			snprintf(hint, sizeof(hint), " (did you mean '%.*s'?)",
				 (int)klens[bi], keys[bi]);
		else if (n > 0 && n <= 12) {
			append(hint, sizeof(hint), &off, " (known keys: ");
			for (size_t i = 0; i < n; i++)
				append(hint, sizeof(hint), &off, "%s%.*s",
				       i ? ", " : "", (int)klens[i], keys[i]);
			append(hint, sizeof(hint), &off, ")");
		}
	}
	return fail(L, path, 1, "unknown key %s%s", quoted(key, q, sizeof(q)),
		    hint);
}

/*
 * Walks an object of the file that the table describes (the top, "etcd",
 * "link", ...) and refuses keys no row names, in the order they appear.
 * prefix is the level's dotted name, path its path for messages.
 */
static int check_level(struct load *L, const json_t *obj, char *prefix,
		       char *path)
{
	size_t plen = strlen(prefix), pathlen = strlen(path);
	const char *key;
	json_t *v;

	json_object_foreach((json_t *)obj, key, v)
	{
		int plain = *key != '\0', rv = 0;

		for (const char *k = key; *k; k++)
			if (!name_char_ok(*k))
				plain = 0;
		path[pathlen] = '\0';
		mer_json_path_append(path, NAME_MAX_LEN, key);
		if (plain && plen + 1 + strlen(key) < NAME_MAX_LEN) {
			snprintf(prefix + plen, NAME_MAX_LEN - plen, "%s%s",
				 plen ? "." : "", key);
			if (find_row(L->t, prefix)) {
				rv = 0;
			} else if (is_level(L->t, prefix, strlen(prefix))) {
				if (!json_is_object(v))
					rv = fail(L, path, 0,
						  "expected an object, got %s",
						  mer_json_type_name(v));
				else
					rv = check_level(L, v, prefix, path);
			} else {
				prefix[plen] = '\0';
				rv = unknown_key(L, prefix, plen, key, path);
			}
		} else {
			prefix[plen] = '\0';
			rv = unknown_key(L, prefix, plen, key, path);
		}
		prefix[plen] = '\0';
		path[pathlen] = '\0';
		if (rv)
			return rv;
	}
	return 0;
}

/* The file's value for a row, or NULL when the file does not set it. */
static const json_t *lookup(const json_t *root, const char *name)
{
	char word[NAME_MAX_LEN];
	const json_t *v = root;

	while (v && *name) {
		const char *dot = strchr(name, '.');
		size_t n = dot ? (size_t)(dot - name) : strlen(name);
		snprintf(word, sizeof(word), "%.*s", (int)n, name);
		v = json_is_object(v) ? json_object_get(v, word) : NULL;
		name += n + (dot ? 1 : 0);
	}
	return v;
}

/* ---- checks on the effective values ---------------------------------- */

static int check_path(struct load *L, const struct mer_cfg_row *r)
{
	const char *p = *(char *const *)cfield(L->cfg, r);
	char q[96];
	struct stat st;
	int fd;

	if (!p || !*p || !(r->flags & (MER_CFG_MUST_EXIST | MER_CFG_READABLE)))
		return 0;
	quoted(p, q, sizeof(q));
	if (stat(p, &st) != 0)
		return fail(L, r->name, 0, "%s %s", q,
			    errno == ENOENT ? "does not exist"
					    : strerror(errno));
	if (!(r->flags & MER_CFG_READABLE))
		return 0;
	if (S_ISDIR(st.st_mode))
		return fail(L, r->name, 0, "%s is a directory, not a file", q);
	fd = open(p, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return fail(L, r->name, 0, "%s cannot be read: %s", q,
			    strerror(errno));
	close(fd);
	return 0;
}

static int check_row_value(struct load *L, const struct mer_cfg_row *r,
			   const json_t *from_file)
{
	char msg[MSG_LEN];
	int rv = 0;

	if (r->type == MER_CFG_PATH) {
		rv = check_path(L, r);
		if (rv)
			return rv;
	}
	if (r->validate) {
		const char *bad;
		msg[0] = '\0';
		bad = r->validate(cfield(L->cfg, r), L->cfg, msg, sizeof(msg));
		if (bad)
			return fail(L, r->name, 0, "%s", bad);
	}
	if (r->type == MER_CFG_JSON && r->check_json) {
		const json_t *v = *(json_t *const *)cfield(L->cfg, r);
		struct mer_json_doc dd;
		char *text;

		if (!v)
			return 0;
		if (from_file) {
			rv = r->check_json(L->doc, r->name, v, L->cfg, L->err,
					   L->errlen);
			return rv;
		}
		/* A default gets a document of its own to point into. */
		snprintf(msg, sizeof(msg), "default of %s", r->name);
		text = mer_json_dumps(v);
		if (!text)
			return fail_nomem(L);
		rv = mer_json_doc_parse(msg, text, strlen(text), 0, 0, &dd,
					L->err, L->errlen);
		free(text);
		if (rv)
			return rv;
		rv = r->check_json(&dd, "", dd.root, L->cfg, L->err, L->errlen);
		mer_json_doc_free(&dd);
	}
	return rv;
}

/* ---- loading --------------------------------------------------------- */

static int load_into(const struct mer_cfg_table *t,
		     const struct mer_json_doc *doc, void *cfg, char *err,
		     size_t errlen)
{
	struct load L = {t, NULL, NULL, err, errlen};
	char prefix[NAME_MAX_LEN] = "", path[NAME_MAX_LEN] = "";
	int rv;

	if (err && errlen)
		err[0] = '\0';
	rv = table_check(t, err, errlen);
	if (rv)
		return rv;
	if (!cfg)
		return fail_table(err, errlen, "no struct to fill");
	L.cfg = malloc(t->size);
	if (!L.cfg)
		return fail_nomem(&L);
	/* Fields the table does not describe keep the caller's values. */
	memcpy(L.cfg, cfg, t->size);
	for (size_t i = 0; i < t->nrows; i++)
		field_clear(L.cfg, &t->rows[i]);

	rv = apply_defaults(&L);
	if (rv)
		goto out_free_scratch;
	L.doc = doc;
	if (doc) {
		if (!json_is_object(doc->root)) {
			rv = fail(&L, "", 0,
				  "expected an object at the top, got %s",
				  mer_json_type_name(doc->root));
			goto out_free_scratch;
		}
		rv = check_level(&L, doc->root, prefix, path);
		if (rv)
			goto out_free_scratch;
	}
	for (size_t i = 0; i < t->nrows; i++) {
		const struct mer_cfg_row *r = &t->rows[i];
		const json_t *v = doc ? lookup(doc->root, r->name) : NULL;
		if (v)
			rv = set_value(&L, r, v);
		else if (doc && (r->flags & MER_CFG_REQUIRED))
			rv =
			    fail(&L, r->name, 0, "required setting is missing");
		if (rv)
			goto out_free_scratch;
	}
	if (doc) {
		for (size_t i = 0; i < t->nrows; i++) {
			const struct mer_cfg_row *r = &t->rows[i];
			rv = check_row_value(&L, r, lookup(doc->root, r->name));
			if (rv)
				goto out_free_scratch;
		}
	}
	memcpy(cfg, L.cfg, t->size);
	free(L.cfg);
	return 0;

out_free_scratch:
	mer_cfg_free(t, L.cfg);
	free(L.cfg);
	return rv;
}

int mer_cfg_table_check(const struct mer_cfg_table *t, char *err, size_t errlen)
{
	void *scratch;
	int rv;

	rv = table_check(t, err, errlen);
	if (rv)
		return rv;
	/* Defaults are checked by applying them to a throwaway struct. */
	scratch = calloc(1, t->size);
	if (!scratch)
		return MER_ENOMEM;
	rv = load_into(t, NULL, scratch, err, errlen);
	if (rv == 0)
		mer_cfg_free(t, scratch);
	free(scratch);
	return rv;
}

int mer_cfg_defaults(const struct mer_cfg_table *t, void *cfg, char *err,
		     size_t errlen)
{
	return load_into(t, NULL, cfg, err, errlen);
}

int mer_cfg_load_doc(const struct mer_cfg_table *t,
		     const struct mer_json_doc *doc, void *cfg, char *err,
		     size_t errlen)
{
	if (!doc || !doc->root)
		return fail_table(err, errlen, "no document");
	return load_into(t, doc, cfg, err, errlen);
}

int mer_cfg_load_string(const struct mer_cfg_table *t, const char *name,
			const char *text, size_t len, void *cfg, char *err,
			size_t errlen)
{
	struct mer_json_doc doc;
	int rv;

	rv = mer_json_doc_parse(name, text, len, MER_CFG_MAX_BYTES,
				MER_CFG_MAX_DEPTH, &doc, err, errlen);
	if (rv)
		return rv;
	rv = load_into(t, &doc, cfg, err, errlen);
	/* The text may hold secrets (passwords, tokens). */
	sodium_memzero(doc.text, doc.len);
	mer_json_doc_free(&doc);
	return rv;
}

int mer_cfg_load_file(const struct mer_cfg_table *t, const char *path,
		      void *cfg, char *err, size_t errlen)
{
	struct mer_json_doc doc;
	int rv;

	rv = mer_json_doc_load(path, MER_CFG_MAX_BYTES, MER_CFG_MAX_DEPTH, &doc,
			       err, errlen);
	if (rv)
		return rv;
	rv = load_into(t, &doc, cfg, err, errlen);
	/* The text may hold secrets (passwords, tokens). */
	sodium_memzero(doc.text, doc.len);
	mer_json_doc_free(&doc);
	return rv;
}

/* ---- the effective config -------------------------------------------- */

static int row_is_set(const struct mer_cfg_row *r, const void *cfg)
{
	const void *f = cfield(cfg, r);

	switch (r->type) {
	case MER_CFG_STRING:
	case MER_CFG_PATH:
		return *(char *const *)f && **(char *const *)f;
	case MER_CFG_STRLIST:
		return ((const struct mer_strlist *)f)->n > 0;
	case MER_CFG_JSON:
		return *(json_t *const *)f != NULL;
	case MER_CFG_BOOL:
	case MER_CFG_INT64:
	case MER_CFG_DURATION:
	case MER_CFG_SIZE:
	case MER_CFG_DOUBLE:
	case MER_CFG_ENUM:
		return 1;
	}
	return 0;
}

static json_t *row_to_json(const struct mer_cfg_row *r, const void *cfg)
{
	const void *f = cfield(cfg, r);
	char buf[64];

	if (r->flags & MER_CFG_SECRET)
		return row_is_set(r, cfg) ? json_string("[redacted]")
					  : json_null();
	switch (r->type) {
	case MER_CFG_BOOL:
		return json_boolean(*(const bool *)f);
	case MER_CFG_INT64:
		return json_integer(*(const int64_t *)f);
	case MER_CFG_DOUBLE:
		return json_real(*(const double *)f);
	case MER_CFG_STRING:
	case MER_CFG_PATH:
		return *(char *const *)f ? json_string(*(char *const *)f)
					 : json_null();
	case MER_CFG_ENUM:
		for (const struct mer_cfg_enum *e = r->enums; e && e->name; e++)
			if (e->value == *(const int *)f)
				return json_string(e->name);
		return json_integer(*(const int *)f);
	case MER_CFG_STRLIST: {
		const struct mer_strlist *l = f;
		json_t *a = json_array();
		for (size_t i = 0; a && i < l->n; i++) {
			if (json_array_append_new(a, json_string(l->v[i]))) {
				json_decref(a);
				return NULL;
			}
		}
		return a;
	}
	case MER_CFG_DURATION:
		mer_cfg_format_duration(*(const int64_t *)f, buf, sizeof(buf));
		return json_string(buf);
	case MER_CFG_SIZE:
		mer_cfg_format_size(*(const int64_t *)f, buf, sizeof(buf));
		return json_string(buf);
	case MER_CFG_JSON:
		return *(json_t *const *)f ? json_incref(*(json_t *const *)f)
					   : json_null();
	}
	return NULL;
}

json_t *mer_cfg_to_json(const struct mer_cfg_table *t, const void *cfg)
{
	json_t *root = json_object();
	char word[NAME_MAX_LEN];

	if (!root || !t || !cfg)
		goto out_fail;
	for (size_t i = 0; i < t->nrows; i++) {
		const struct mer_cfg_row *r = &t->rows[i];
		const char *name = r->name, *dot;
		json_t *obj = root, *v;

		while ((dot = strchr(name, '.')) != NULL) {
			json_t *sub;
			snprintf(word, sizeof(word), "%.*s", (int)(dot - name),
				 name);
			sub = json_object_get(obj, word);
			if (!sub) {
				sub = json_object();
				if (json_object_set_new(obj, word, sub))
					goto out_fail;
			}
			obj = sub;
			name = dot + 1;
		}
		v = row_to_json(r, cfg);
		if (!v || json_object_set_new(obj, name, v))
			goto out_fail;
	}
	return root;

out_fail:
	json_decref(root);
	return NULL;
}

int mer_cfg_print(const struct mer_cfg_table *t, const void *cfg, FILE *out)
{
	if (!t || !cfg || !out)
		return MER_EINVAL;
	for (size_t i = 0; i < t->nrows; i++) {
		const struct mer_cfg_row *r = &t->rows[i];
		json_t *v;
		char *s;

		if ((r->flags & MER_CFG_SECRET) && row_is_set(r, cfg)) {
			fprintf(out, "%s = [redacted]\n", r->name);
			continue;
		}
		v = row_to_json(r, cfg);
		s = v ? mer_json_dumps(v) : NULL;
		json_decref(v);
		if (!s)
			return MER_ENOMEM;
		fprintf(out, "%s = %s\n", r->name, s);
		free(s);
	}
	return ferror(out) ? MER_EIO : 0;
}
