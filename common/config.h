/*
 * Configuration as a table (after Redis's config.c): each setting is one
 * row naming a dotted path in a JSON file, its type, bounds, default,
 * optional validator and the offset of the field it fills in the caller's
 * struct. The loader applies defaults, rejects unknown keys at every level
 * the table describes, reports "file:line:column: path: what is wrong", and
 * never half-loads. docs/CONFIG.md is the user-facing description.
 */
#ifndef MERIDIAN_CONFIG_H
#define MERIDIAN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "json.h"

/* The type of a row, and the C type of the field it fills. */
enum mer_cfg_type {
	MER_CFG_BOOL,	  /* bool; JSON true/false */
	MER_CFG_INT64,	  /* int64_t; JSON integer, bounds min..max */
	MER_CFG_DOUBLE,	  /* double; JSON number, bounds dmin..dmax */
	MER_CFG_STRING,	  /* char * (malloc'd); length min..max bytes */
	MER_CFG_ENUM,	  /* int; a string from the row's enums */
	MER_CFG_STRLIST,  /* struct mer_strlist; count min..max */
	MER_CFG_DURATION, /* int64_t milliseconds; "250ms", "30s", "5m", "1h",
			     "2d", "1h30m", "1.5s" or a number of seconds */
	MER_CFG_SIZE,	  /* int64_t bytes; "512KiB", "4MiB", "1GB" or a
			     number of bytes */
	MER_CFG_PATH,	  /* char * (malloc'd); see MER_CFG_MUST_EXIST */
	MER_CFG_JSON	  /* json_t * (a reference); an object or array the
			     caller checks itself, see check_json */
};

/* A list of strings (MER_CFG_STRLIST). Owned by the config struct. */
struct mer_strlist {
	char **v;
	size_t n;
};

/* Row flags. */
enum {
	MER_CFG_REQUIRED = 1u << 0,    /* must be in the file (no default) */
	MER_CFG_SECRET = 1u << 1,      /* printed as [redacted] */
	MER_CFG_MUST_EXIST = 1u << 2,  /* path: must exist when not empty */
	MER_CFG_READABLE = 1u << 3,    /* path: must be a readable file */
	MER_CFG_JSON_OBJECT = 1u << 4, /* json: must be an object */
	MER_CFG_JSON_ARRAY = 1u << 5   /* json: must be an array */
};

/* One allowed value of a MER_CFG_ENUM row; lists end with {NULL, 0}. */
struct mer_cfg_enum {
	const char *name;
	int value;
};

/*
 * A row's validator: called after every row has its value (so it may look
 * at other fields of cfg), with field pointing at this row's field. Returns
 * NULL when the value is acceptable, or what is wrong with it ("must be a
 * multiple of 8"), either static text or written into msg (n bytes). The
 * loader prefixes "file:line:column: <name>: ".
 */
typedef const char *(*mer_cfg_validate_fn)(const void *field, const void *cfg,
					   char *msg, size_t n);

/*
 * A MER_CFG_JSON row's structural check: v is the value (never NULL), path
 * its path in doc (doc is the file, or a document made of the default).
 * Returns 0, or an error code having written a whole error into err, best
 * with mer_json_doc_errf(doc, "<path>[2].gpus", ...) so that it points at
 * the exact line and column inside the value.
 */
typedef int (*mer_cfg_check_json_fn)(const struct mer_json_doc *doc,
				     const char *path, const json_t *v,
				     const void *cfg, char *err, size_t errlen);

struct mer_cfg_row {
	const char *name; /* dotted path: "etcd.endpoints" */
	enum mer_cfg_type type;
	unsigned flags; /* MER_CFG_REQUIRED | ... */
	size_t offset;	/* of the field in the config struct */
	/*
	 * The default, written as in a file but without quotes around
	 * strings: "true", "5", "0.25", "30s", "4MiB", "batch", "/etc/x";
	 * for string lists and json rows JSON text ("[\"a\", \"b\"]").
	 * NULL: false, 0, NULL, an empty list. Checked like a file value.
	 */
	const char *def;
	/*
	 * Bounds. int64, duration (ms), size (bytes): [min, max], none when
	 * both are 0. string: length in bytes, path too; strlist: count;
	 * for both, max 0 means no upper bound.
	 */
	int64_t min, max;
	double dmin, dmax; /* double: [dmin, dmax], none when both are 0 */
	const struct mer_cfg_enum *enums; /* enum rows */
	mer_cfg_validate_fn validate;	  /* optional */
	mer_cfg_check_json_fn check_json; /* optional, json rows */
	const char *help;		  /* one line, for docs and print */
};

/* A whole table: rows plus the size of the struct they fill. */
struct mer_cfg_table {
	const struct mer_cfg_row *rows;
	size_t nrows;
	size_t size; /* sizeof the config struct */
};

/*
 * Row helpers that also check the field's C type at compile time. Use them
 * inside braces and add other members after:
 *   {MER_CFG_ROW_DURATION("etcd.timeout", struct cfg, etcd_timeout_ms,
 *                         1, 60000, "5s"), .help = "per-request timeout"},
 */
#define MER_CFG_OFFSET(st, field, ctype)                                       \
	(offsetof(st, field) +                                                 \
	 0 * sizeof(char[_Generic(((st *)0)->field, ctype : 1, default         \
				  : -1)]))

#define MER_CFG_ROW_BOOL(nm, st, field, dflt)                                  \
	.name = (nm), .type = MER_CFG_BOOL,                                    \
	.offset = MER_CFG_OFFSET(st, field, bool), .def = (dflt)
#define MER_CFG_ROW_INT64(nm, st, field, lo, hi, dflt)                         \
	.name = (nm), .type = MER_CFG_INT64,                                   \
	.offset = MER_CFG_OFFSET(st, field, int64_t), .min = (lo),             \
	.max = (hi), .def = (dflt)
#define MER_CFG_ROW_DOUBLE(nm, st, field, lo, hi, dflt)                        \
	.name = (nm), .type = MER_CFG_DOUBLE,                                  \
	.offset = MER_CFG_OFFSET(st, field, double), .dmin = (lo),             \
	.dmax = (hi), .def = (dflt)
#define MER_CFG_ROW_STRING(nm, st, field, minlen, maxlen, dflt)                \
	.name = (nm), .type = MER_CFG_STRING,                                  \
	.offset = MER_CFG_OFFSET(st, field, char *), .min = (minlen),          \
	.max = (maxlen), .def = (dflt)
#define MER_CFG_ROW_ENUM(nm, st, field, list, dflt)                            \
	.name = (nm), .type = MER_CFG_ENUM,                                    \
	.offset = MER_CFG_OFFSET(st, field, int), .enums = (list),             \
	.def = (dflt)
#define MER_CFG_ROW_STRLIST(nm, st, field, mincount, maxcount, dflt)           \
	.name = (nm), .type = MER_CFG_STRLIST,                                 \
	.offset = MER_CFG_OFFSET(st, field, struct mer_strlist),               \
	.min = (mincount), .max = (maxcount), .def = (dflt)
#define MER_CFG_ROW_DURATION(nm, st, field, lo_ms, hi_ms, dflt)                \
	.name = (nm), .type = MER_CFG_DURATION,                                \
	.offset = MER_CFG_OFFSET(st, field, int64_t), .min = (lo_ms),          \
	.max = (hi_ms), .def = (dflt)
#define MER_CFG_ROW_SIZE(nm, st, field, lo, hi, dflt)                          \
	.name = (nm), .type = MER_CFG_SIZE,                                    \
	.offset = MER_CFG_OFFSET(st, field, int64_t), .min = (lo),             \
	.max = (hi), .def = (dflt)
#define MER_CFG_ROW_PATH(nm, st, field, dflt)                                  \
	.name = (nm), .type = MER_CFG_PATH,                                    \
	.offset = MER_CFG_OFFSET(st, field, char *), .def = (dflt)
#define MER_CFG_ROW_JSON(nm, st, field, dflt)                                  \
	.name = (nm), .type = MER_CFG_JSON,                                    \
	.offset = MER_CFG_OFFSET(st, field, json_t *), .def = (dflt)

#define MER_CFG_TABLE(st, rowarray)                                            \
	{                                                                      \
		.rows = (rowarray),                                            \
		.nrows = sizeof(rowarray) / sizeof((rowarray)[0]),             \
		.size = sizeof(st)                                             \
	}

/* Size and nesting limits for config files. */
#define MER_CFG_MAX_BYTES (1u << 20)
#define MER_CFG_MAX_DEPTH 32

/*
 * Loads the file at path into cfg. Rows are set to their defaults, then to
 * the file's values; then the validators run. On success every field the
 * table describes is overwritten (not freed: load into a fresh struct and
 * mer_cfg_free the old one, as a reload does); fields the table does not
 * describe are left alone. On failure cfg is untouched and err holds
 * "file:line:column: path: what is wrong". Returns 0, MER_EIO, MER_ETOOBIG,
 * MER_EPARSE (bad JSON), MER_EINVAL (a value is wrong, or the table is),
 * MER_ENOMEM, or a check_json callback's code.
 */
int mer_cfg_load_file(const struct mer_cfg_table *t, const char *path,
		      void *cfg, char *err, size_t errlen);
/* The same for text (for tests and config sent over the API); name labels
 * errors ("request body"). */
int mer_cfg_load_string(const struct mer_cfg_table *t, const char *name,
			const char *text, size_t len, void *cfg, char *err,
			size_t errlen);
/* The same for a document parsed already (the caller still owns doc). */
int mer_cfg_load_doc(const struct mer_cfg_table *t,
		     const struct mer_json_doc *doc, void *cfg, char *err,
		     size_t errlen);
/* Sets cfg to the defaults alone (as a load of "{}" without the required
 * rows); fails only on a bad table or memory. */
int mer_cfg_defaults(const struct mer_cfg_table *t, void *cfg, char *err,
		     size_t errlen);

/* Checks the table itself: names, bounds, enum lists, defaults. Loads do
 * this too; a unit test of each table calls it. */
int mer_cfg_table_check(const struct mer_cfg_table *t, char *err,
			size_t errlen);

/* Frees what a load put in cfg (strings, lists, json references) and sets
 * those fields to NULL/empty. Accepts NULL and a zeroed struct. */
void mer_cfg_free(const struct mer_cfg_table *t, void *cfg);

/*
 * The effective configuration as a JSON object nested by the row names,
 * durations and sizes in their text form ("30s", "4MiB"), secret rows as
 * "[redacted]" (or null when unset). NULL on allocation failure.
 */
json_t *mer_cfg_to_json(const struct mer_cfg_table *t, const void *cfg);
/* The same as "name = value" lines, in table order. Returns 0 or MER_EIO. */
int mer_cfg_print(const struct mer_cfg_table *t, const void *cfg, FILE *out);

/* Parsers the loader uses, for the same units elsewhere (CLI flags).
 * Return 0 or MER_EINVAL (bad syntax) / MER_ETOOBIG (overflow). */
int mer_cfg_parse_duration(const char *s, int64_t *ms);
int mer_cfg_parse_size(const char *s, int64_t *bytes);
/* Shortest exact text for a duration ("90s", "1h30m", "250ms") or a size
 * ("4MiB", "1000B"); always NUL-terminates when n > 0. */
void mer_cfg_format_duration(int64_t ms, char *out, size_t n);
void mer_cfg_format_size(int64_t bytes, char *out, size_t n);

/* Frees the strings of a list and empties it. */
void mer_strlist_free(struct mer_strlist *l);

#endif
