# Warning flags for moonq's own targets, probed so an older compiler simply
# skips what it does not know.
set(MOONQ_WARNINGS "")
foreach(flag
    -Wall -Wextra -Wpedantic -Wshadow -Wundef -Wwrite-strings -Wpointer-arith
    -Wmissing-prototypes -Wstrict-prototypes -Wold-style-definition
    -Wformat=2 -Wformat-security -Wimplicit-fallthrough -Wnull-dereference
    -Wcast-align -Wvla -Wno-unused-parameter)
  string(MAKE_C_IDENTIFIER "HAVE_WFLAG${flag}" var)
  check_c_compiler_flag(${flag} ${var})
  if(${var})
    list(APPEND MOONQ_WARNINGS ${flag})
  endif()
endforeach()
if(MOONQ_WERROR)
  list(APPEND MOONQ_WARNINGS -Werror)
endif()
