# cmake -DOUT=file.c -DFILES="web/a.js|web/b.css" -P EmbedWeb.cmake
# Writes a C file defining mq_web_files[]: {name, bytes, length}, the
# dashboard's files by their file name, ended by a zeroed entry.
set(body "/* Generated from web/ by cmake/EmbedWeb.cmake; do not edit. */\n")
string(APPEND body "#include \"http_web.h\"\n\n")
set(table "")
set(i 0)
string(REPLACE "|" ";" FILES "${FILES}")
foreach(f IN LISTS FILES)
  get_filename_component(name ${f} NAME)
  file(READ ${f} hex HEX)
  string(LENGTH "${hex}" len)
  math(EXPR len "${len} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  # One line of 32 bytes at a time keeps the file readable by tools.
  string(REGEX REPLACE "((0x..,){32})" "\\1\n  " hex "${hex}")
  string(APPEND body "static const unsigned char file${i}[] = {\n  ${hex}0};\n")
  string(APPEND table "  {\"${name}\", file${i}, ${len}},\n")
  math(EXPR i "${i} + 1")
endforeach()
string(APPEND body "\nconst struct mq_web_file mq_web_files[] = {\n${table}  {0, 0, 0}};\n")
file(WRITE ${OUT} "${body}")
