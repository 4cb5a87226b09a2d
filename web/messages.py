"""Every string of the search page, in each language it speaks, and the choice of language.

Each message is a whole sentence with named {fields}, never pieces joined in code, so that a
translation can put the fields where its grammar wants them. The template renders them, and the
page's script gets the same table.
"""

from __future__ import annotations

from typing import Any

from flask import Request
from markupsafe import Markup

LANGUAGES = {"en": "English", "zh": "中文"}  # code -> its own name, for the switch
DEFAULT_LANGUAGE = "en"
COOKIE = "lang"  # set by the page's switch, so the choice outlives Accept-Language

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "language": "Language",
        "search_label": "Search your images",
        "placeholder": "Describe a picture: a dog on a beach - people",
        "image_button": "Image…",
        "image_button_title": "Search by an image: choose, drop or paste one",
        "search": "Search",
        "filters": "Filters",
        "folder": "Folder",
        "type": "Type",
        "tag": "Tag",
        "tag_score": "probability {score}: click for every image with this tag",
        "any": "any",
        "from": "From",
        "to": "To",
        "collapse": "Hide near-duplicates",
        "attribute_min": "{name} min",
        "attribute_max": "{name} max",
        "hint": "{size} images · {model} · <kbd>/</kbd> to search · <code>beach - people</code>"
        " leaves people out, <code>2:sunset</code> weighs a term double",
        "idle": "Type what you are looking for, in plain words, or drop an image here.",
        "searching": "Searching…",
        "results": "Results: {count} in {ms} ms",
        "results_like": "More like image {id}: {count} in {ms} ms",
        "results_upload": "Images like {name}: {count} in {ms} ms",
        "pasted_image": "the pasted image",
        "nothing": "Nothing matched. Try other words, or fewer filters.",
        "server_answered": "The server answered {status}.",
        "not_an_image": "That is not an image: choose a JPEG, PNG, WebP, GIF or HEIC file.",
        "cosine": "cosine similarity",
        "more_like_this": "more like this",
        "view_product": "View product",
        "score": "score",
        "path": "path",
        "size": "size",
        "close": "Close",
        "previous": "Previous image",
        "next": "Next image",
        "lightbox_like": "More like this",
        "open_original": "Open original",
        "drop": "Drop an image to search by it",
        "duplicates": "Duplicates",
        "threshold": "Similarity from",
        "show": "Show",
        "duplicate_groups": "{count} groups of copies at cosine {threshold} or more",
        "no_duplicates": "No copies at this similarity.",
        "best_copy": "best copy",
        "same_file": "same file",
        "more_groups": "More groups",
        "notice_english_only": "This collection's model reads English only: queries in Chinese"
        " and other non-Latin scripts find little. Index with a multilingual model"
        " (xlm-roberta-base-ViT-B-32) to search in them.",
        # The server's errors by code (search/errors.py); {detail} is its English message.
        "error_error": "{detail}",
        "error_server": "The collection cannot be searched right now: {detail}",
        "error_internal": "The server failed on this search; try again.",
        "error_bad_request": "{detail}",
        "error_too_large": "That image is too large to upload: {detail}",
        "error_not_found": "{detail}",
        "error_not_ready": "{detail}",
        "error_bad_image": "That image cannot be used: {detail}",
        "error_terms_cancel": "The query's terms cancel out: add a term, or leave out a - term.",
        "error_no_image": "There is no image with id {id}.",
        "error_weight": "A term's weight must be above 0 and at most {max}, as in 2:sunset.",
    },
    "zh": {
        "language": "语言",
        "search_label": "搜索你的图片",
        "placeholder": "描述一张图片：海边的狗 - 人",
        "image_button": "图片…",
        "image_button_title": "以图搜图：选择、拖入或粘贴一张图片",
        "search": "搜索",
        "filters": "筛选",
        "folder": "文件夹",
        "type": "类型",
        "tag": "标签",
        "tag_score": "概率 {score}：点击查看所有带此标签的图片",
        "any": "全部",
        "from": "起始日期",
        "to": "截止日期",
        "collapse": "隐藏近似重复的图片",
        "attribute_min": "{name} 最低",
        "attribute_max": "{name} 最高",
        "hint": "共 {size} 张图片 · {model} · 按 <kbd>/</kbd> 开始搜索 · <code>海滩 - 人</code>"
        " 排除人物，<code>2:日落</code> 让该词的权重加倍",
        "idle": "用平常的话描述你要找的图片，或把图片拖到这里。",
        "searching": "正在搜索…",
        "results": "结果：{count} 个，用时 {ms} 毫秒",
        "results_like": "与图片 {id} 相似：{count} 个，用时 {ms} 毫秒",
        "results_upload": "与 {name} 相似的图片：{count} 个，用时 {ms} 毫秒",
        "pasted_image": "粘贴的图片",
        "nothing": "没有匹配的结果。换个说法，或减少筛选条件试试。",
        "server_answered": "服务器返回了 {status}。",
        "not_an_image": "这不是图片：请选择 JPEG、PNG、WebP、GIF 或 HEIC 文件。",
        "cosine": "余弦相似度",
        "more_like_this": "找相似",
        "view_product": "查看商品",
        "score": "相似度",
        "path": "路径",
        "size": "尺寸",
        "close": "关闭",
        "previous": "上一张",
        "next": "下一张",
        "lightbox_like": "找相似的图片",
        "open_original": "打开原图",
        "drop": "松开即可用这张图片搜索",
        "duplicates": "重复图片",
        "threshold": "相似度不低于",
        "show": "显示",
        "duplicate_groups": "相似度 {threshold} 以上的重复图片：共 {count} 组",
        "no_duplicates": "在这个相似度下没有重复的图片。",
        "best_copy": "最佳副本",
        "same_file": "完全相同的文件",
        "more_groups": "更多",
        "notice_english_only": "这个图库的模型只读得懂英文：用中文等非拉丁文字查询几乎找不到相关的"
        "图片。要用中文搜索，请用多语言模型（如 xlm-roberta-base-ViT-B-32）建立索引。",
        "error_error": "出错了：{detail}",
        "error_server": "暂时无法搜索这个图库：{detail}",
        "error_internal": "服务器处理这次搜索时出错了，请重试。",
        "error_bad_request": "无法按此条件搜索：{detail}",
        "error_too_large": "图片太大，无法上传：{detail}",
        "error_not_found": "找不到：{detail}",
        "error_not_ready": "请几秒钟后再试：{detail}",
        "error_bad_image": "无法使用这张图片：{detail}",
        "error_terms_cancel": "查询中的各项相互抵消了：请再加一个词，或去掉一个带 - 的词。",
        "error_no_image": "没有编号为 {id} 的图片。",
        "error_weight": "词的权重必须大于 0 且不超过 {max}，例如 2:日落。",
    },
}


def choose_language(request: Request) -> str:
    """The page's switch (a cookie) first, then the browser's Accept-Language."""
    chosen = request.cookies.get(COOKIE)
    if chosen in MESSAGES:
        return chosen
    return request.accept_languages.best_match(MESSAGES, default=DEFAULT_LANGUAGE)


def translator(language: str) -> Any:
    """`t(key, **fields)` for templates: our own markup kept, every field escaped."""
    messages = MESSAGES[language]

    def t(key: str, **fields: Any) -> Markup:
        return Markup(messages[key]).format(**fields)

    return t
