// A small JSON Schema checker for the tests: the subset dit_export/export/manifest/manifest.schema.json
// uses (type, required, properties, additionalProperties, propertyNames, enum, pattern, minimum,
// exclusiveMinimum, minLength, minItems, items, $ref to #/$defs, anyOf, if/then). It lets the C++ tests
// hold the C++ reader to the very schema the Python reader validates with.
#pragma once

#include <nlohmann/json.hpp>
#include <regex>
#include <string>

namespace schema {

using json = nlohmann::json;

inline bool has_type(const json& v, const std::string& t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  // As draft 2020-12 (and both readers): 2.0 is an integer.
  if (t == "integer") return v.is_number_integer() || (v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>())));
  if (t == "number") return v.is_number();
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  return false;
}

// "" when `v` is valid under `s`, else the first violation ("at model.config.depth: ...").
inline std::string check(const json& root, const json& s, const json& v, const std::string& at = "$") {
  if (s.is_boolean()) return s.get<bool>() ? "" : at + ": not allowed";
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"];
    const std::string prefix = "#/$defs/";
    if (ref.rfind(prefix, 0) != 0) return at + ": unsupported $ref " + ref;
    if (std::string e = check(root, root["$defs"][ref.substr(prefix.size())], v, at); !e.empty()) return e;
  }
  if (s.contains("anyOf")) {
    std::string first;
    bool any = false;
    for (const json& alt : s["anyOf"]) {
      const std::string e = check(root, alt, v, at);
      if (e.empty()) any = true;
      else if (first.empty()) first = e;
    }
    if (!any) return first;
  }
  if (s.contains("if") && check(root, s["if"], v, at).empty() && s.contains("then"))
    if (std::string e = check(root, s["then"], v, at); !e.empty()) return e;
  if (s.contains("type")) {
    bool ok = false;
    if (s["type"].is_string()) ok = has_type(v, s["type"]);
    else
      for (const json& t : s["type"]) ok = ok || has_type(v, t);
    if (!ok) return at + ": wrong type (" + s["type"].dump() + ")";
  }
  if (s.contains("enum")) {
    bool ok = false;
    for (const json& e : s["enum"]) ok = ok || e == v;
    if (!ok) return at + ": not one of " + s["enum"].dump();
  }
  if (v.is_string()) {
    const std::string str = v;
    if (s.contains("minLength") && str.size() < s["minLength"].get<size_t>()) return at + ": too short";
    if (s.contains("pattern") && !std::regex_search(str, std::regex(s["pattern"].get<std::string>())))
      return at + ": does not match " + s["pattern"].get<std::string>();
  }
  if (v.is_number()) {
    const double x = v.get<double>();
    if (s.contains("minimum") && x < s["minimum"].get<double>()) return at + ": below the minimum";
    if (s.contains("exclusiveMinimum") && x <= s["exclusiveMinimum"].get<double>()) return at + ": not above the minimum";
  }
  if (v.is_array()) {
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return at + ": too few items";
    if (s.contains("items"))
      for (size_t i = 0; i < v.size(); ++i)
        if (std::string e = check(root, s["items"], v[i], at + "[" + std::to_string(i) + "]"); !e.empty()) return e;
  }
  if (v.is_object()) {
    if (s.contains("required"))
      for (const json& k : s["required"])
        if (!v.contains(k.get<std::string>())) return at + ": missing required '" + k.get<std::string>() + "'";
    for (auto& [k, val] : v.items()) {
      const std::string here = at + "." + k;
      if (s.contains("propertyNames") && !check(root, s["propertyNames"], json(k), here).empty())
        return here + ": bad property name";
      if (s.contains("properties") && s["properties"].contains(k)) {
        if (std::string e = check(root, s["properties"][k], val, here); !e.empty()) return e;
      } else if (s.contains("additionalProperties")) {
        if (std::string e = check(root, s["additionalProperties"], val, here); !e.empty()) return e;
      }
    }
  }
  return "";
}

inline std::string check(const json& schema, const json& v) { return check(schema, schema, v); }

}  // namespace schema
