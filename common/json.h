/*
 * JSON helpers over jansson: parsing with size and nesting limits, and
 * documents that keep their source text so that an error found after parsing
 * (a wrong type, a value out of bounds, an unknown key) can still be reported
 * as "file:line:column: message". Not a JSON library of its own.
 */
#ifndef MERIDIAN_JSON_H
#define MERIDIAN_JSON_H

#include <stddef.h>
#include <jansson.h>

#define MER_JSON_MAX_DEPTH 64            /* default nesting limit */
#define MER_JSON_MAX_BYTES (4u << 20)    /* default size limit: 4 MiB */

/* A parsed document with the text it came from. */
struct mer_json_doc {
	char *name;  /* file path, or a label such as "request body" */
	char *text;  /* NUL-terminated source */
	size_t len;
	json_t *root;
};

/*
 * Parses text (len bytes; need not be NUL-terminated) named name. Documents
 * over max_bytes or nested deeper than max_depth (0 = the defaults above) are
 * refused with MER_ETOOBIG; syntax errors give MER_EPARSE. On error err gets
 * "name:line:column: message" (or "name: message" where no position
 * applies) and doc is left empty.
 */
int mer_json_doc_parse(const char *name, const char *text, size_t len,
		       size_t max_bytes, size_t max_depth,
		       struct mer_json_doc *doc, char *err, size_t errlen);
/* The same for a file; unreadable files give MER_EIO with strerror text. */
int mer_json_doc_load(const char *path, size_t max_bytes, size_t max_depth,
		      struct mer_json_doc *doc, char *err, size_t errlen);
/* Frees what the doc owns; accepts NULL and an empty doc. */
void mer_json_doc_free(struct mer_json_doc *doc);

/*
 * Writes "name:line:column: <path>: <message>" into err for the value at path
 * in the document (see mer_json_locate for the path syntax; the position is
 * that of the value, or of the enclosing object when the value is absent).
 */
void mer_json_doc_errf(const struct mer_json_doc *doc, const char *path,
		       char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/*
 * Finds where the value at path starts in text: 1-based line and column.
 * path: "" for the root, "a.b" for members, "a[2].b" for array elements;
 * member names containing '.' or '[' are written ["a.b"]. Returns 0, or
 * MER_ENOTFOUND (line/col then hold the deepest enclosing value found).
 */
int mer_json_locate(const char *text, size_t len, const char *path, int *line,
		    int *col);

/* --- additions (helper "config") -------------------------------------- */

/*
 * Notes on the functions above: columns count characters (UTF-8 lead bytes)
 * as jansson's do. mer_json_locate also returns MER_EINVAL for a malformed
 * path ("a..b", "a[x]") and MER_ENOMEM; line/col are then 1:1.
 */

/* As mer_json_locate, but when the last step of path is a member name the
 * position is that of the member's key (for "unknown key" errors). */
int mer_json_locate_key(const char *text, size_t len, const char *path,
			int *line, int *col);

/* As mer_json_doc_errf, with the position of the member's key. */
void mer_json_doc_key_errf(const struct mer_json_doc *doc, const char *path,
			   char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/*
 * Appends member key to the path in path (a NUL-terminated string in a
 * buffer of n bytes): ".key", or ["key"] (with \" and \\ escaped) when the
 * key is empty or holds '.', '[', ']', '"' or '\\'. Truncates at n; returns
 * the new length.
 */
size_t mer_json_path_append(char *path, size_t n, const char *key);

/* "an object", "a string", "an integer", "null"... for error messages. */
const char *mer_json_type_name(const json_t *v);

/* Nesting depth of a value (a scalar is 0, [] is 1). */
size_t mer_json_depth(const json_t *v);

/* Compact JSON text (malloc'd, or NULL); keys sorted for determinism. */
char *mer_json_dumps(const json_t *v);

#endif
