# Finds libpq, Lua 5.4, libmicrohttpd and libev with pkg-config where a .pc file exists,
# falling back to find_path/find_library (Debian's libev ships no .pc file).
find_package(PkgConfig REQUIRED)

pkg_check_modules(PQ REQUIRED IMPORTED_TARGET libpq)
add_library(moonq::pq ALIAS PkgConfig::PQ)

pkg_check_modules(LUA REQUIRED IMPORTED_TARGET lua5.4)
add_library(moonq::lua ALIAS PkgConfig::LUA)

pkg_check_modules(EV QUIET IMPORTED_TARGET libev)
if(EV_FOUND)
  add_library(moonq::ev ALIAS PkgConfig::EV)
else()
  find_path(EV_INCLUDE_DIR ev.h REQUIRED)
  find_library(EV_LIBRARY NAMES ev REQUIRED)
  add_library(moonq_ev INTERFACE)
  target_include_directories(moonq_ev INTERFACE ${EV_INCLUDE_DIR})
  target_link_libraries(moonq_ev INTERFACE ${EV_LIBRARY})
  add_library(moonq::ev ALIAS moonq_ev)
endif()

pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd)
add_library(moonq::mhd ALIAS PkgConfig::MHD)
